//! `nli-bert download NAME`: a catalog entry (bert.small, bert.base, SNLI) into the cache;
//! `--list` prints the catalog.

use crate::data::hub;
use crate::error::{Error, Result};

/// Downloads and unpacks `name`, printing where it is; with `list`, prints the catalog instead.
pub fn run(name: Option<&str>, list: bool) -> Result<()> {
    if list {
        for e in hub::catalog() {
            println!("{}\tsha1 {}\t{}\t-> {}", e.name, e.sha1, e.url, e.folder);
        }
        return Ok(());
    }
    let name =
        name.ok_or_else(|| Error::usage("give a catalog name (nli-bert download --list shows them)"))?;
    let dir = hub::download_extract(name)?;
    println!("{}", dir.display());
    Ok(())
}
