//! Downloads, the SHA-1-checked cache and zip extraction, against a tiny HTTP/1.1 server on
//! 127.0.0.1 written here (GET with `Range` support, scripted failures). Only
//! `env_wrappers_use_env_overrides` touches environment variables.

use std::collections::HashMap;
use std::io::{Cursor, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex};

use nli_bert::data::hub::{
    cache_dir, catalog, download, download_extract_with, download_with, entry, extract_zip,
    import_extract_with, sha1_file, HubEntry, EXTRACTED_MARKER,
};
use sha1::{Digest, Sha1};
use zip::write::SimpleFileOptions;

/// What the server does for one path.
#[derive(Clone)]
enum Route {
    /// Serve the bytes, honouring `Range: bytes=N-` with 206.
    Ok(Vec<u8>),
    /// Answer with this status and an empty body.
    Status(u16),
    /// First request: announce the full length but send only `cut` bytes and close. Later
    /// requests are served normally, with or without honouring `Range`.
    DropFirst { body: Vec<u8>, cut: usize, honor_range: bool },
    /// Every request is cut short.
    DropAlways { body: Vec<u8>, cut: usize },
}

/// (path, Range header) of every request, in order.
type Log = Arc<Mutex<Vec<(String, Option<String>)>>>;

struct Server {
    base: String,
    log: Log,
}

impl Server {
    fn start(routes: Vec<(&str, Route)>) -> Server {
        let routes: HashMap<String, Route> = routes.into_iter().map(|(p, r)| (p.to_string(), r)).collect();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let log: Log = Arc::default();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                let (routes, log) = (routes.clone(), log2.clone());
                std::thread::spawn(move || handle(stream, &routes, &log));
            }
        });
        Server { base, log }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn requests(&self) -> Vec<(String, Option<String>)> {
        self.log.lock().unwrap().clone()
    }
}

fn handle(mut s: TcpStream, routes: &HashMap<String, Route>, log: &Log) {
    let mut req = Vec::new();
    let mut buf = [0u8; 4096];
    while !req.windows(4).any(|w| w == b"\r\n\r\n") {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => req.extend_from_slice(&buf[..n]),
        }
    }
    let text = String::from_utf8_lossy(&req).to_string();
    let path = text.split(' ').nth(1).unwrap_or("").to_string();
    let range = text
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("range:"))
        .map(|l| l.split_once(':').unwrap().1.trim().to_string());
    let n_before = {
        let mut log = log.lock().unwrap();
        let n = log.iter().filter(|(p, _)| *p == path).count();
        log.push((path.clone(), range.clone()));
        n
    };
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.trim_end_matches('-').parse().ok());
    match routes.get(&path) {
        None => status(&mut s, 404),
        Some(Route::Status(c)) => status(&mut s, *c),
        Some(Route::Ok(body)) => serve(&mut s, body, start),
        Some(Route::DropFirst { body, cut, honor_range }) => {
            if n_before == 0 {
                cut_short(&mut s, body, *cut)
            } else {
                serve(&mut s, body, if *honor_range { start } else { None })
            }
        }
        Some(Route::DropAlways { body, cut }) => cut_short(&mut s, body, *cut),
    }
}

fn status(s: &mut TcpStream, code: u16) {
    let _ = write!(s, "HTTP/1.1 {code} Status\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
}

fn serve(s: &mut TcpStream, body: &[u8], start: Option<usize>) {
    match start {
        Some(a) if a < body.len() => {
            let _ = write!(
                s,
                "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {a}-{}/{}\r\nConnection: close\r\n\r\n",
                body.len() - a,
                body.len() - 1,
                body.len()
            );
            let _ = s.write_all(&body[a..]);
        }
        _ => {
            let _ =
                write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
            let _ = s.write_all(body);
        }
    }
    let _ = s.flush();
}

fn cut_short(s: &mut TcpStream, body: &[u8], cut: usize) {
    let _ = write!(s, "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    let _ = s.write_all(&body[..cut]);
    let _ = s.flush();
    let _ = s.shutdown(std::net::Shutdown::Both);
}

fn sha1_hex(b: &[u8]) -> String {
    Sha1::digest(b).iter().map(|x| format!("{x:02x}")).collect()
}

/// A zip holding `entries` (names ending in `/` are directories), deflated or stored.
fn make_zip(entries: &[(&str, &[u8])], stored: bool) -> Vec<u8> {
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    let method = if stored { zip::CompressionMethod::Stored } else { zip::CompressionMethod::Deflated };
    let opts = SimpleFileOptions::default().compression_method(method);
    for (name, data) in entries {
        if name.ends_with('/') {
            w.add_directory(*name, opts).unwrap();
        } else {
            w.start_file(*name, opts).unwrap();
            w.write_all(data).unwrap();
        }
    }
    w.finish().unwrap().into_inner()
}

/// Pseudo-random bytes (so deflate cannot shrink them much).
fn noise(n: usize) -> Vec<u8> {
    let mut x = 0x1234_5678u32;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn bert_zip() -> Vec<u8> {
    make_zip(
        &[
            ("bert.small.torch/", b""),
            ("bert.small.torch/vocab.json", br#"["<unk>", "<pad>", "<mask>", "<cls>", "<sep>", "the"]"#),
            ("bert.small.torch/pretrained.params", &noise(300_000)),
        ],
        false,
    )
}

fn hub_entry(server: &Server, path: &str, sha1: &str, folder: &str) -> HubEntry {
    HubEntry {
        name: "bert.small".into(),
        url: server.url(path),
        sha1: sha1.into(),
        folder: folder.into(),
        size: "about 1 MB",
    }
}

fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = match std::fs::read_dir(dir) {
        Ok(rd) => rd.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect(),
        Err(_) => vec![],
    };
    v.sort();
    v
}

#[test]
fn download_extract_then_cache_hits() {
    let zip = bert_zip();
    let server = Server::start(vec![("/bert.small.torch.zip", Route::Ok(zip.clone()))]);
    let cache = tempfile::tempdir().unwrap();
    let e = hub_entry(&server, "/bert.small.torch.zip", &sha1_hex(&zip), "bert.small.torch");

    let folder = download_extract_with(&e, cache.path()).unwrap();
    assert_eq!(folder, cache.path().join("bert.small.torch"));
    assert_eq!(listing(&folder), vec![EXTRACTED_MARKER, "pretrained.params", "vocab.json"]);
    assert_eq!(std::fs::read(folder.join("pretrained.params")).unwrap(), noise(300_000));
    assert_eq!(std::fs::read_to_string(folder.join(EXTRACTED_MARKER)).unwrap().trim(), sha1_hex(&zip));
    assert_eq!(listing(cache.path()), vec!["bert.small.torch", "bert.small.torch.zip"]);
    assert_eq!(sha1_file(cache.path().join("bert.small.torch.zip")).unwrap(), sha1_hex(&zip));
    assert_eq!(server.requests().len(), 1);

    // Cache hit: no request, no re-extraction (the marker matches).
    std::fs::write(folder.join("vocab.json"), "edited").unwrap();
    assert_eq!(download_extract_with(&e, cache.path()).unwrap(), folder);
    assert_eq!(download_with(&e, cache.path()).unwrap(), cache.path().join("bert.small.torch.zip"));
    assert_eq!(server.requests().len(), 1);
    assert_eq!(std::fs::read_to_string(folder.join("vocab.json")).unwrap(), "edited");

    // Marker gone: extracted again from the cached zip, still no request.
    std::fs::remove_file(folder.join(EXTRACTED_MARKER)).unwrap();
    download_extract_with(&e, cache.path()).unwrap();
    assert!(std::fs::read_to_string(folder.join("vocab.json")).unwrap().contains("<cls>"));
    assert_eq!(server.requests().len(), 1);

    // A cached file with the wrong content is downloaded again.
    std::fs::write(cache.path().join("bert.small.torch.zip"), b"stale").unwrap();
    download_with(&e, cache.path()).unwrap();
    assert_eq!(server.requests().len(), 2);
    assert_eq!(sha1_file(cache.path().join("bert.small.torch.zip")).unwrap(), sha1_hex(&zip));
}

#[test]
fn sha1_mismatch_caches_nothing() {
    let server = Server::start(vec![("/x.zip", Route::Ok(bert_zip()))]);
    let cache = tempfile::tempdir().unwrap();
    let wrong = "0000000000000000000000000000000000000000";
    let err = download_with(&hub_entry(&server, "/x.zip", wrong, "x"), cache.path()).unwrap_err().to_string();
    assert!(
        err.contains("SHA-1 mismatch") && err.contains(wrong) && err.contains(&sha1_hex(&bert_zip())),
        "{err}"
    );
    assert!(err.contains(&server.url("/x.zip")), "{err}");
    assert!(listing(cache.path()).is_empty(), "{:?}", listing(cache.path()));
}

#[test]
fn http_errors_fail_without_retry() {
    let server = Server::start(vec![("/e500.zip", Route::Status(500)), ("/e403.zip", Route::Status(403))]);
    let cache = tempfile::tempdir().unwrap();
    for (path, code) in [("/e500.zip", "500"), ("/e403.zip", "403"), ("/missing.zip", "404")] {
        let err = download_with(&hub_entry(&server, path, "00", "x"), cache.path()).unwrap_err();
        let msg = err.to_string();
        assert!(matches!(err, nli_bert::Error::Download { .. }), "{msg}");
        assert!(msg.contains(&format!("HTTP {code}")) && msg.contains(path), "{msg}");
    }
    assert_eq!(server.requests().len(), 3);
    assert!(listing(cache.path()).is_empty());
}

#[test]
fn dropped_connection_is_resumed_or_restarted() {
    let zip = bert_zip();
    let cut = zip.len() / 3;
    let server = Server::start(vec![
        ("/resume.zip", Route::DropFirst { body: zip.clone(), cut, honor_range: true }),
        ("/restart.zip", Route::DropFirst { body: zip.clone(), cut, honor_range: false }),
    ]);
    let cache = tempfile::tempdir().unwrap();
    for path in ["/resume.zip", "/restart.zip"] {
        let e = hub_entry(&server, path, &sha1_hex(&zip), "bert.small.torch");
        let file = download_with(&e, cache.path()).unwrap();
        assert_eq!(std::fs::read(&file).unwrap(), zip, "{path}");
    }
    let reqs = server.requests();
    assert_eq!(reqs.len(), 4, "{reqs:?}");
    assert_eq!(reqs[0], ("/resume.zip".to_string(), None));
    assert_eq!(reqs[1], ("/resume.zip".to_string(), Some(format!("bytes={cut}-"))));
    assert_eq!(reqs[3].1, Some(format!("bytes={cut}-")), "asked to resume, got the whole file");
    assert_eq!(listing(cache.path()), vec!["restart.zip", "resume.zip"]);
}

#[test]
fn persistent_drops_give_up_after_retries() {
    let zip = bert_zip();
    let server = Server::start(vec![("/flaky.zip", Route::DropAlways { body: zip.clone(), cut: 1000 })]);
    let cache = tempfile::tempdir().unwrap();
    let err =
        download_with(&hub_entry(&server, "/flaky.zip", &sha1_hex(&zip), "x"), cache.path()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("4 attempts") && msg.contains("/flaky.zip"), "{msg}");
    assert_eq!(server.requests().len(), 4);
    assert!(listing(cache.path()).is_empty());
}

#[test]
fn zip_entries_escaping_dest_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let outside_abs = tmp.path().join("abs-evil.txt");
    let abs_name = outside_abs.to_string_lossy().into_owned();
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("../evil.txt", make_zip(&[("ok/a.txt", b"fine"), ("../evil.txt", b"pwned")], false)),
        ("ok/../../evil.txt", make_zip(&[("ok/../../evil.txt", b"pwned")], false)),
        (&abs_name, make_zip(&[("ok/a.txt", b"fine"), (&abs_name, b"pwned")], false)),
    ];
    for (bad, bytes) in &cases {
        let zip_path = tmp.path().join("evil.zip");
        std::fs::write(&zip_path, bytes).unwrap();
        let dest = tmp.path().join("dest");
        let err = extract_zip(&zip_path, &dest).unwrap_err().to_string();
        assert!(err.contains(bad) && err.contains("refusing"), "{err}");
        assert!(listing(&dest).is_empty(), "nothing extracted: {:?}", listing(&dest));
        assert!(!tmp.path().join("evil.txt").exists() && !outside_abs.exists());
    }

    // Symbolic links are refused too.
    let mut w = zip::ZipWriter::new(Cursor::new(Vec::new()));
    w.add_symlink("ok/link", "/etc/passwd", SimpleFileOptions::default()).unwrap();
    let zip_path = tmp.path().join("link.zip");
    std::fs::write(&zip_path, w.finish().unwrap().into_inner()).unwrap();
    let err = extract_zip(&zip_path, &tmp.path().join("dest")).unwrap_err().to_string();
    assert!(err.contains("ok/link") && err.contains("symbolic link"), "{err}");
    assert_eq!(listing(tmp.path()), vec!["evil.zip", "link.zip"]);
}

#[test]
fn corrupt_zips_are_errors_and_leave_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let dest = tmp.path().join("dest");

    let garbage = tmp.path().join("garbage.zip");
    std::fs::write(&garbage, noise(5000)).unwrap();
    let err = extract_zip(&garbage, &dest).unwrap_err().to_string();
    assert!(err.contains("not a valid zip") && err.contains("garbage.zip"), "{err}");

    let good = make_zip(&[("pkg/a.bin", &noise(4000)), ("pkg/b.bin", &noise(4000))], true);
    let truncated = tmp.path().join("truncated.zip");
    std::fs::write(&truncated, &good[..good.len() / 2]).unwrap();
    assert!(extract_zip(&truncated, &dest).is_err());

    // Flip a data byte of the second (stored) entry: its CRC fails after the first was written.
    let mut bad = good.clone();
    bad[4000 + 200] ^= 0xff;
    let flipped = tmp.path().join("flipped.zip");
    std::fs::write(&flipped, &bad).unwrap();
    let err = extract_zip(&flipped, &dest).unwrap_err().to_string();
    assert!(err.contains("flipped.zip"), "{err}");
    assert!(listing(&dest).is_empty(), "no half-extracted files: {:?}", listing(&dest));

    // A download whose archive lacks the expected folder.
    let zip = make_zip(&[("other/x.txt", b"x")], false);
    let server = Server::start(vec![("/bert.small.torch.zip", Route::Ok(zip.clone()))]);
    let cache = tmp.path().join("cache");
    let e = hub_entry(&server, "/bert.small.torch.zip", &sha1_hex(&zip), "bert.small.torch");
    let err = download_extract_with(&e, &cache).unwrap_err().to_string();
    assert!(err.contains("no top-level folder") && err.contains("bert.small.torch"), "{err}");
}

#[test]
fn env_wrappers_use_env_overrides() {
    let server =
        Server::start(vec![("/mirror/bert.small.torch.zip", Route::Ok(b"not the real file".to_vec()))]);
    let home = tempfile::tempdir().unwrap();
    std::env::set_var("NLI_BERT_HOME", home.path());
    std::env::set_var("NLI_BERT_D2L_URL", server.url("/mirror"));
    std::env::set_var("NLI_BERT_SNLI_URL", server.url("/snli/snli_1.0.zip"));

    assert_eq!(cache_dir(), home.path());
    let names: Vec<String> = catalog().into_iter().map(|e| e.name).collect();
    assert_eq!(names, ["bert.small", "bert.base", "SNLI"]);
    let snli = entry("snli").unwrap();
    assert_eq!(
        (snli.url.as_str(), snli.folder.as_str()),
        (server.url("/snli/snli_1.0.zip").as_str(), "snli_1.0")
    );
    assert_eq!(entry("bert.base").unwrap().url, server.url("/mirror/bert.base.torch.zip"));
    assert_eq!(entry("bert.small").unwrap().sha1, "c72329e68a732bef0452e4b96a1c341c8910f81f");
    let err = entry("bert.tiny").unwrap_err();
    assert_eq!(err.exit_code(), 2);
    assert!(err.to_string().contains("bert.small, bert.base, SNLI"), "{err}");

    // The real SHA-1 cannot match the mirror's bytes: the download is tried and rejected.
    let err = download("bert.small").unwrap_err().to_string();
    assert!(
        err.contains("SHA-1 mismatch") && err.contains(&server.url("/mirror/bert.small.torch.zip")),
        "{err}"
    );
    assert_eq!(server.requests().len(), 1);
    assert!(listing(home.path()).is_empty());

    std::env::remove_var("NLI_BERT_D2L_URL");
    std::env::remove_var("NLI_BERT_SNLI_URL");
    assert_eq!(entry("SNLI").unwrap().url, "https://nlp.stanford.edu/projects/snli/snli_1.0.zip");
    assert_eq!(
        entry("bert.small").unwrap().url,
        "http://d2l-data.s3-accelerate.amazonaws.com/bert.small.torch.zip"
    );
    std::env::remove_var("NLI_BERT_HOME");
}

#[test]
fn import_from_a_file_unpacks_like_a_download_and_checks_the_sha1() {
    let zip = bert_zip();
    let server = Server::start(vec![("/bert.small.torch.zip", Route::Ok(zip.clone()))]);
    let e = hub_entry(&server, "/bert.small.torch.zip", &sha1_hex(&zip), "bert.small.torch");
    // What a download leaves in the cache...
    let downloaded = tempfile::tempdir().unwrap();
    download_extract_with(&e, downloaded.path()).unwrap();
    // ...and what importing the same archive from elsewhere leaves, without any request.
    let elsewhere = tempfile::tempdir().unwrap();
    let file = elsewhere.path().join("fetched-by-hand.zip");
    std::fs::write(&file, &zip).unwrap();
    let cache = tempfile::tempdir().unwrap();
    let folder = import_extract_with(&e, cache.path(), &file).unwrap();
    assert_eq!(folder, cache.path().join("bert.small.torch"));
    assert_eq!(listing(cache.path()), listing(downloaded.path()));
    assert_eq!(listing(&folder), listing(&downloaded.path().join("bert.small.torch")));
    assert_eq!(std::fs::read(folder.join("pretrained.params")).unwrap(), noise(300_000));
    assert_eq!(server.requests().len(), 1, "only the download made a request");
    // Importing the cached file itself is a no-op copy.
    let cached = cache.path().join("bert.small.torch.zip");
    assert_eq!(import_extract_with(&e, cache.path(), &cached).unwrap(), folder);

    // The wrong file: both hashes named, nothing imported.
    let wrong = elsewhere.path().join("other.zip");
    std::fs::write(&wrong, b"not the archive").unwrap();
    let empty = tempfile::tempdir().unwrap();
    let err = import_extract_with(&e, empty.path(), &wrong).unwrap_err().to_string();
    assert!(err.contains(&sha1_hex(b"not the archive")) && err.contains(&sha1_hex(&zip)), "{err}");
    assert!(listing(empty.path()).is_empty(), "{:?}", listing(empty.path()));
    // A missing file is a usage error.
    let err = import_extract_with(&e, empty.path(), &elsewhere.path().join("nope.zip")).unwrap_err();
    assert!(matches!(err, nli_bert::Error::Usage(_)), "{err}");
}

#[test]
fn a_failed_download_says_what_to_fetch_and_how_to_import_it() {
    let server = Server::start(vec![("/e500.zip", Route::Status(500))]);
    let cache = tempfile::tempdir().unwrap();
    let e = hub_entry(&server, "/e500.zip", "00ff", "x");
    let msg = download_with(&e, cache.path()).unwrap_err().to_string();
    assert!(msg.contains(&server.url("/e500.zip")) && msg.contains("SHA-1 00ff"), "{msg}");
    assert!(msg.contains("nli-bert download bert.small --from FILE"), "{msg}");
}

#[test]
fn the_download_help_lists_the_catalog() {
    let o = std::process::Command::new(env!("CARGO_BIN_EXE_nli-bert"))
        .args(["download", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&o.stdout);
    for e in nli_bert::data::hub::catalog_with(nli_bert::data::hub::DATA_URL, nli_bert::data::hub::SNLI_URL) {
        for field in [e.name.as_str(), e.size, e.sha1.as_str(), e.url.as_str()] {
            assert!(help.contains(field), "`download --help` lacks {field:?} of {}:\n{help}", e.name);
        }
    }
    assert!(help.contains("--from <FILE>"), "{help}");
}
