//! d2l's `DATA_HUB`: the catalog of downloads (pretrained BERTs, SNLI), a SHA-1-checked cache,
//! and safe zip extraction.
//!
//! Differences from d2l, all on the side of safety: the hash is checked *after* downloading too
//! (d2l only checks the cached file), downloads go to a temporary file renamed into place, dropped
//! connections are resumed, zip entries that would escape the destination are refused, and an
//! archive is extracted once (a marker file records which download it came from).
//!
//! Environment: `NLI_BERT_HOME` (cache directory, default `~/.cache/nli-bert`),
//! `NLI_BERT_D2L_URL` (replaces d2l's `DATA_URL` prefix, e.g. a mirror), `NLI_BERT_SNLI_URL`
//! (replaces the whole SNLI URL). The `*_with` functions take these explicitly.

use std::fs::File;
use std::io::{BufReader, Read, Seek, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use sha1::{Digest, Sha1};

use crate::error::{Error, Result};

/// d2l's `DATA_URL` (plain http, as in the book).
pub const DATA_URL: &str = "http://d2l-data.s3-accelerate.amazonaws.com/";
/// d2l's `DATA_HUB['SNLI']` URL.
pub const SNLI_URL: &str = "https://nlp.stanford.edu/projects/snli/snli_1.0.zip";
/// Environment variable: cache directory.
pub const ENV_HOME: &str = "NLI_BERT_HOME";
/// Environment variable: replacement for [`DATA_URL`].
pub const ENV_D2L_URL: &str = "NLI_BERT_D2L_URL";
/// Environment variable: replacement for [`SNLI_URL`].
pub const ENV_SNLI_URL: &str = "NLI_BERT_SNLI_URL";
/// Marker written into an extracted folder; holds the SHA-1 of the archive it came from.
pub const EXTRACTED_MARKER: &str = ".nli-bert-extracted";
/// How many times a dropped connection is retried (so at most this + 1 attempts).
pub const MAX_RETRIES: u32 = 3;

/// One downloadable archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubEntry {
    /// d2l's name: `bert.small`, `bert.base`, `SNLI`.
    pub name: String,
    /// Where to fetch it.
    pub url: String,
    /// Expected SHA-1 of the file, lower-case hex.
    pub sha1: String,
    /// The top-level folder the archive extracts to (d2l: the file name without extension).
    pub folder: String,
    /// About how large the archive is, for people fetching it by hand (not checked).
    pub size: &'static str,
}

impl HubEntry {
    /// The cached file's name: the last path component of the URL (as d2l).
    pub fn file_name(&self) -> &str {
        let path = self.url.split(['?', '#']).next().unwrap_or(&self.url);
        path.rsplit('/').next().unwrap_or(path)
    }
}

/// The catalog with explicit URLs: `d2l_base` replaces [`DATA_URL`] (a missing trailing `/` is
/// added), `snli_url` replaces [`SNLI_URL`].
pub fn catalog_with(d2l_base: &str, snli_url: &str) -> Vec<HubEntry> {
    let base = if d2l_base.ends_with('/') { d2l_base.to_string() } else { format!("{d2l_base}/") };
    let e = |name: &str, url: String, sha1: &str, folder: &str| HubEntry {
        name: name.into(),
        url,
        sha1: sha1.into(),
        folder: folder.into(),
        size: match name {
            // 4 bytes per parameter of d2l's pretraining model (encoder, MLM and NSP heads)
            "bert.small" => "about 130 MB",
            "bert.base" => "about 700 MB",
            _ => "about 95 MB",
        },
    };
    vec![
        e(
            "bert.small",
            format!("{base}bert.small.torch.zip"),
            "c72329e68a732bef0452e4b96a1c341c8910f81f",
            "bert.small.torch",
        ),
        e(
            "bert.base",
            format!("{base}bert.base.torch.zip"),
            "225d66f04cae318b841a13d32af3acc165f253ac",
            "bert.base.torch",
        ),
        e("SNLI", snli_url.to_string(), "9fcde07509c7e87ec61c640c1b2753d9041758e4", "snli_1.0"),
    ]
}

/// The catalog, with URL overrides from `NLI_BERT_D2L_URL` / `NLI_BERT_SNLI_URL`.
pub fn catalog() -> Vec<HubEntry> {
    let d2l = std::env::var(ENV_D2L_URL).ok().filter(|s| !s.is_empty());
    let snli = std::env::var(ENV_SNLI_URL).ok().filter(|s| !s.is_empty());
    catalog_with(d2l.as_deref().unwrap_or(DATA_URL), snli.as_deref().unwrap_or(SNLI_URL))
}

/// The catalog entry called `name` (case-insensitive); a usage error listing the known names
/// otherwise.
pub fn entry(name: &str) -> Result<HubEntry> {
    let all = catalog();
    let names: Vec<String> = all.iter().map(|e| e.name.clone()).collect();
    all.into_iter()
        .find(|e| e.name.eq_ignore_ascii_case(name))
        .ok_or_else(|| Error::usage(format!("unknown download {name:?}; known: {}", names.join(", "))))
}

/// The cache directory: `$NLI_BERT_HOME`, else `$HOME/.cache/nli-bert`, else `.cache/nli-bert`
/// under the current directory.
pub fn cache_dir() -> PathBuf {
    if let Some(h) = std::env::var_os(ENV_HOME).filter(|s| !s.is_empty()) {
        return PathBuf::from(h);
    }
    let home = std::env::var_os("HOME").or_else(|| std::env::var_os("USERPROFILE")).filter(|s| !s.is_empty());
    home.map(PathBuf::from).unwrap_or_default().join(".cache").join("nli-bert")
}

/// SHA-1 of a file, lower-case hex (read in 1 MiB chunks, as d2l).
pub fn sha1_file(path: impl AsRef<Path>) -> Result<String> {
    let path = path.as_ref();
    let mut f = File::open(path).map_err(|e| Error::io(path, e))?;
    let mut h = Sha1::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(|e| Error::io(path, e))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex(&h.finalize()))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// d2l's `download(name)` into [`cache_dir`]; returns the cached file.
pub fn download(name: &str) -> Result<PathBuf> {
    download_with(&entry(name)?, &cache_dir())
}

/// Downloads `entry` into `cache` (created if needed) unless `cache/<file>` already has the right
/// SHA-1. The data goes to `<file>.part-<pid>`, hashed while streaming; on a match it is synced
/// and renamed into place, on a mismatch it is deleted and an error names both hashes and the
/// URL. A dropped connection is retried up to [`MAX_RETRIES`] times, resuming with a `Range`
/// request when the server honours it. HTTP error statuses are not retried.
pub fn download_with(entry: &HubEntry, cache: &Path) -> Result<PathBuf> {
    if entry.file_name().is_empty() || entry.file_name() == ".." {
        return Err(Error::usage(format!(
            "download {}: URL {} does not end in a file name",
            entry.name, entry.url
        )));
    }
    std::fs::create_dir_all(cache).map_err(|e| Error::io(cache, e))?;
    let dest = cache.join(entry.file_name());
    if dest.is_file() {
        let have = sha1_file(&dest)?;
        if have.eq_ignore_ascii_case(&entry.sha1) {
            return Ok(dest);
        }
        eprintln!("{}: SHA-1 {have} is not the expected {}; downloading again", dest.display(), entry.sha1);
    }
    let tmp = cache.join(format!("{}.part-{}", entry.file_name(), std::process::id()));
    let result = fetch(entry, &tmp, &dest).map_err(|e| offline_hint(e, entry)).and_then(|got| {
        if got.eq_ignore_ascii_case(&entry.sha1) {
            std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e))?;
            sync_dir(cache);
            Ok(dest.clone())
        } else {
            Err(Error::Download {
                what: entry.name.clone(),
                msg: format!(
                    "SHA-1 mismatch for {}: expected {}, got {got}. The file at that URL is not the one \
                     d2l published (a changed mirror or a proxy error page?); nothing was cached",
                    entry.url, entry.sha1
                ),
            })
        }
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// A failed fetch, with how to get the file without this machine downloading it.
fn offline_hint(e: Error, entry: &HubEntry) -> Error {
    match e {
        Error::Download { what, msg } => Error::Download {
            what,
            msg: format!(
                "{msg}. Without internet here, fetch {} elsewhere ({}, SHA-1 {}) and import it with \
                 `nli-bert download {} --from FILE`",
                entry.url, entry.size, entry.sha1, entry.name
            ),
        },
        e => e,
    }
}

/// Imports an archive fetched elsewhere as `entry`: checks its SHA-1, copies it into `cache`
/// under the name a download would have (through a temporary file and a rename, so nothing
/// half-written is left), then extracts it exactly as [`download_extract_with`] does. Returns
/// `cache/<entry.folder>`.
pub fn import_extract_with(entry: &HubEntry, cache: &Path, file: &Path) -> Result<PathBuf> {
    if !file.is_file() {
        return Err(Error::usage(format!("--from {}: no such file", file.display())));
    }
    let have = sha1_file(file)?;
    if !have.eq_ignore_ascii_case(&entry.sha1) {
        return Err(Error::Download {
            what: entry.name.clone(),
            msg: format!(
                "{} has SHA-1 {have}, not the {} of {} ({}); nothing was imported",
                file.display(),
                entry.sha1,
                entry.name,
                entry.url
            ),
        });
    }
    std::fs::create_dir_all(cache).map_err(|e| Error::io(cache, e))?;
    let dest = cache.join(entry.file_name());
    let same = dest.canonicalize().ok().is_some_and(|d| file.canonicalize().is_ok_and(|f| f == d));
    if !same {
        let tmp = cache.join(format!("{}.part-{}", entry.file_name(), std::process::id()));
        let copied = std::fs::copy(file, &tmp)
            .map_err(|e| Error::io(&tmp, e))
            .and_then(|_| File::open(&tmp).and_then(|f| f.sync_all()).map_err(|e| Error::io(&tmp, e)))
            .and_then(|_| std::fs::rename(&tmp, &dest).map_err(|e| Error::io(&dest, e)));
        if let Err(e) = copied {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        sync_dir(cache);
    }
    download_extract_with(entry, cache)
}

/// [`import_extract_with`] into [`cache_dir`].
pub fn import_extract(name: &str, file: &Path) -> Result<PathBuf> {
    import_extract_with(&entry(name)?, &cache_dir(), file)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .accept_encoding(ureq::config::AutoHeaderValue::None)
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .new_agent()
}

/// Parses the first byte of `Content-Range: bytes <start>-<end>/<total>`.
fn content_range_start(resp: &ureq::http::Response<ureq::Body>) -> Option<u64> {
    let v = resp.headers().get("content-range")?.to_str().ok()?;
    v.trim().strip_prefix("bytes")?.trim().split('-').next()?.trim().parse().ok()
}

/// The partial download: file, running hash, bytes so far.
struct Partial<'a> {
    file: File,
    path: &'a Path,
    hasher: Sha1,
    written: u64,
}

impl Partial<'_> {
    /// Drops what was written so far.
    fn restart(&mut self) -> Result<()> {
        self.file.set_len(0).and_then(|_| self.file.rewind()).map_err(|e| Error::io(self.path, e))?;
        self.hasher = Sha1::new();
        self.written = 0;
        Ok(())
    }

    /// Appends a response body. `Ok(Some(why))` if the connection dropped before `total` bytes.
    fn append(
        &mut self,
        resp: ureq::http::Response<ureq::Body>,
        total: Option<u64>,
    ) -> Result<Option<String>> {
        let mut reader = resp.into_body().into_reader();
        let mut buf = vec![0u8; 1 << 16];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    self.file.write_all(&buf[..n]).map_err(|e| Error::io(self.path, e))?;
                    self.hasher.update(&buf[..n]);
                    self.written += n as u64;
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Ok(Some(format!("connection dropped after {} bytes: {e}", self.written))),
            }
        }
        Ok(match total {
            Some(t) if self.written < t => {
                Some(format!("connection closed after {} of {t} bytes", self.written))
            }
            _ => None,
        })
    }
}

/// Streams `entry.url` into `tmp`, returning the SHA-1 of what was written.
fn fetch(entry: &HubEntry, tmp: &Path, dest: &Path) -> Result<String> {
    let agent = agent();
    let file = File::create(tmp).map_err(|e| Error::io(tmp, e))?;
    let mut part = Partial { file, path: tmp, hasher: Sha1::new(), written: 0 };
    let mut retries = 0u32;
    let mut announced = false;
    loop {
        let mut req = agent.get(&entry.url);
        if part.written > 0 {
            req = req.header("Range", format!("bytes={}-", part.written));
        }
        // `Some(why)`: a failure worth retrying. HTTP error statuses return at once.
        let failure = match req.call() {
            Err(e) => Some(format!("{e}")),
            Ok(resp) => {
                let status = resp.status().as_u16();
                let len = resp.body().content_length();
                let resumed =
                    status == 206 && part.written > 0 && content_range_start(&resp) == Some(part.written);
                let total = match status {
                    200 => {
                        // A full body: the server ignored any Range request, so start over.
                        part.restart()?;
                        len
                    }
                    206 if resumed => len.map(|l| l + part.written),
                    206 => {
                        part.restart()?;
                        None
                    }
                    _ => {
                        let hint = match status {
                            404 => " (not found: check the URL or mirror)",
                            401 | 403 => " (access denied: check the URL or mirror)",
                            _ => "",
                        };
                        return Err(Error::Download {
                            what: entry.name.clone(),
                            msg: format!("HTTP {status} from {}{hint}", entry.url),
                        });
                    }
                };
                if status == 206 && !resumed {
                    Some("the server answered with a range that was not asked for; restarting".to_string())
                } else {
                    if !announced {
                        announced = true;
                        let size = total.map(|t| format!(" ({:.1} MB)", t as f64 / 1e6)).unwrap_or_default();
                        eprintln!("downloading {} -> {}{size}", entry.url, dest.display());
                    }
                    part.append(resp, total)?
                }
            }
        };
        match failure {
            None => break,
            Some(why) if retries < MAX_RETRIES => {
                retries += 1;
                eprintln!("{}: {why}; retry {retries}/{MAX_RETRIES}", entry.url);
                std::thread::sleep(Duration::from_millis(250 << retries));
            }
            Some(why) => {
                return Err(Error::Download {
                    what: entry.name.clone(),
                    msg: format!(
                        "{why} ({} attempts, {}); check the network and try again",
                        retries + 1,
                        entry.url
                    ),
                })
            }
        }
    }
    part.file.sync_all().map_err(|e| Error::io(tmp, e))?;
    Ok(hex(&part.hasher.finalize()))
}

/// Best-effort fsync of a directory, so a rename survives a crash.
fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

/// Downloads `url` to `dest` without a hash check (for files no catalog lists, such as a Hugging
/// Face model's: they are checked by parsing them). Same temporary file, retries and resume as
/// [`download_with`]; `what` names the download in messages. `Ok(false)` when the server answers
/// 404 (nothing is written), so callers can try another file name.
pub fn download_file(url: &str, dest: &Path, what: &str) -> Result<bool> {
    let dir = match dest.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    let name = dest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dir.join(format!("{name}.part-{}", std::process::id()));
    let entry =
        HubEntry { name: what.into(), url: url.into(), sha1: String::new(), folder: String::new(), size: "" };
    let result = match fetch(&entry, &tmp, dest) {
        Ok(_) => std::fs::rename(&tmp, dest).map(|_| true).map_err(|e| Error::io(dest, e)),
        // `fetch` reports HTTP statuses as "HTTP <code> from <url>…"
        Err(Error::Download { msg, .. }) if msg.starts_with("HTTP 404 ") => Ok(false),
        Err(e) => Err(e),
    };
    match result {
        Ok(true) => sync_dir(dir),
        _ => {
            let _ = std::fs::remove_file(&tmp);
        }
    }
    result
}

/// d2l's `download_extract(name)` with [`cache_dir`]: returns `<cache>/<folder>`.
pub fn download_extract(name: &str) -> Result<PathBuf> {
    download_extract_with(&entry(name)?, &cache_dir())
}

/// Downloads `entry` into `cache` and extracts it there, returning `cache/<entry.folder>`.
/// Extraction is skipped when that folder holds [`EXTRACTED_MARKER`] with the archive's SHA-1.
/// Errors if the archive has no top-level `entry.folder`.
pub fn download_extract_with(entry: &HubEntry, cache: &Path) -> Result<PathBuf> {
    let zip = download_with(entry, cache)?;
    let folder = cache.join(&entry.folder);
    let marker = folder.join(EXTRACTED_MARKER);
    if std::fs::read_to_string(&marker).is_ok_and(|s| s.trim().eq_ignore_ascii_case(&entry.sha1)) {
        return Ok(folder);
    }
    extract_zip(&zip, cache)?;
    if !folder.is_dir() {
        return Err(Error::Download {
            what: entry.name.clone(),
            msg: format!("archive {} has no top-level folder {:?}", zip.display(), entry.folder),
        });
    }
    let tmp = folder.join(format!("{EXTRACTED_MARKER}.tmp-{}", std::process::id()));
    std::fs::write(&tmp, format!("{}\n", entry.sha1))
        .and_then(|_| std::fs::rename(&tmp, &marker))
        .map_err(|e| Error::io(&marker, e))?;
    Ok(folder)
}

/// The relative path an entry name denotes, or `None` if it could escape the destination
/// (absolute, a drive prefix, or a `..` component; `\` counts as a separator too).
fn safe_relative(name: &str) -> Option<PathBuf> {
    if name.starts_with(['/', '\\']) {
        return None;
    }
    let mut out = PathBuf::new();
    for (i, part) in name.split(['/', '\\']).enumerate() {
        match part {
            "" | "." => {}
            ".." => return None,
            p if i == 0
                && p.len() >= 2
                && p.as_bytes()[1] == b':'
                && p.as_bytes()[0].is_ascii_alphabetic() =>
            {
                return None
            }
            p => out.push(p),
        }
    }
    let normal = out.components().all(|c| matches!(c, Component::Normal(_)));
    (normal && !out.as_os_str().is_empty()).then_some(out)
}

/// Extracts every entry of the zip at `zip` under `dest`.
///
/// All entry names are checked first: absolute paths, `..` components and symbolic links are
/// refused with an error naming the entry, before anything is written. Entries are extracted into
/// a temporary folder inside `dest`, then each top-level item is moved into place (replacing an
/// existing one of the same name), so an interrupted or failed extraction leaves no half-written
/// files behind.
pub fn extract_zip(zip: &Path, dest: &Path) -> Result<()> {
    let bad = |msg: String| Error::Download { what: zip.display().to_string(), msg };
    let f = File::open(zip).map_err(|e| Error::io(zip, e))?;
    let mut ar = zip::ZipArchive::new(BufReader::new(f))
        .map_err(|e| bad(format!("not a valid zip archive ({e}); delete it and download again")))?;
    let mut plan = Vec::with_capacity(ar.len());
    for i in 0..ar.len() {
        let e = ar.by_index_raw(i).map_err(|e| bad(format!("entry {i}: {e}")))?;
        let name = e.name().to_string();
        if e.is_symlink() {
            return Err(bad(format!("entry {name:?} is a symbolic link; refusing to extract it")));
        }
        let rel = safe_relative(&name).ok_or_else(|| {
            bad(format!("entry {name:?} would be written outside {}; refusing", dest.display()))
        })?;
        plan.push((i, rel, e.is_dir()));
    }
    std::fs::create_dir_all(dest).map_err(|e| Error::io(dest, e))?;
    let stem = zip.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let tmp = dest.join(format!(".extract-{stem}-{}", std::process::id()));
    let result = (|| -> Result<()> {
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp).map_err(|e| Error::io(&tmp, e))?;
        }
        std::fs::create_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        for (i, rel, is_dir) in &plan {
            let out = tmp.join(rel);
            if *is_dir {
                std::fs::create_dir_all(&out).map_err(|e| Error::io(&out, e))?;
                continue;
            }
            if let Some(parent) = out.parent() {
                std::fs::create_dir_all(parent).map_err(|e| Error::io(parent, e))?;
            }
            let mut entry = ar.by_index(*i).map_err(|e| bad(format!("entry {}: {e}", rel.display())))?;
            let mut w = File::create(&out).map_err(|e| Error::io(&out, e))?;
            std::io::copy(&mut entry, &mut w).map_err(|e| {
                bad(format!("entry {}: {e} (corrupt archive? delete it and download again)", rel.display()))
            })?;
        }
        let items = std::fs::read_dir(&tmp).map_err(|e| Error::io(&tmp, e))?;
        for item in items {
            let item = item.map_err(|e| Error::io(&tmp, e))?;
            let target = dest.join(item.file_name());
            if target.is_dir() && !target.is_symlink() {
                std::fs::remove_dir_all(&target).map_err(|e| Error::io(&target, e))?;
            } else if target.symlink_metadata().is_ok() {
                std::fs::remove_file(&target).map_err(|e| Error::io(&target, e))?;
            }
            std::fs::rename(item.path(), &target).map_err(|e| Error::io(&target, e))?;
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    sync_dir(dest);
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entry_paths() {
        assert_eq!(safe_relative("a/b.txt"), Some(PathBuf::from("a/b.txt")));
        assert_eq!(safe_relative("./a//b/"), Some(PathBuf::from("a/b")));
        for bad in ["../evil", "a/../../evil", "/etc/passwd", "\\evil", "C:\\evil", "a\\..\\..\\x", "", "./"]
        {
            assert_eq!(safe_relative(bad), None, "{bad}");
        }
    }

    #[test]
    fn catalog_names() {
        let c = catalog_with("http://m/x", "http://s/snli.zip");
        assert_eq!(c[0].url, "http://m/x/bert.small.torch.zip");
        assert_eq!(c[0].file_name(), "bert.small.torch.zip");
        assert_eq!(c[2].file_name(), "snli.zip");
        assert_eq!(c[2].folder, "snli_1.0");
    }
}
