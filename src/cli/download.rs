//! `nli-bert download NAME`: a catalog entry (bert.small, bert.base, SNLI) into the cache.

use crate::data::hub;
use crate::error::Result;

/// Downloads and unpacks `name`, printing where it is.
pub fn run(name: &str) -> Result<()> {
    let dir = hub::download_extract(name)?;
    println!("{}", dir.display());
    Ok(())
}
