//! `nli-bert download NAME`: a catalog entry (bert.small, bert.base, SNLI) into the cache;
//! `--from FILE` imports an archive fetched elsewhere (offline machines); `--list` prints the
//! catalog.

use std::path::Path;

use crate::data::hub;
use crate::error::{Error, Result};

/// The catalog as `--list` and `--help` show it.
pub fn catalog_text() -> String {
    hub::catalog()
        .iter()
        .map(|e| format!("{}\t{}\tsha1 {}\t{}\t-> {}\n", e.name, e.size, e.sha1, e.url, e.folder))
        .collect()
}

/// Downloads (or with `from`, imports) and unpacks `name`, printing where it is; with `list`,
/// prints the catalog instead.
pub fn run(name: Option<&str>, list: bool, from: Option<&Path>) -> Result<()> {
    if list {
        print!("{}", catalog_text());
        return Ok(());
    }
    let name =
        name.ok_or_else(|| Error::usage("give a catalog name (nli-bert download --list shows them)"))?;
    let dir = match from {
        Some(file) => hub::import_extract(name, file)?,
        None => hub::download_extract(name)?,
    };
    println!("{}", dir.display());
    Ok(())
}
