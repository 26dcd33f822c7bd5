//! Build script for the CUDA kernels in `kernels/`. Writes `OUT_DIR/kernels.rs` (included by
//! `src/backend/gpu/mod.rs`) with:
//! - `SOURCES`: every `kernels/*.cu` / `*.cuh` (file name, text), embedded;
//! - `COMBINED`: `common.cuh` then every `*.cu` (sorted) as one translation unit for NVRTC, with
//!   `#include "common.cuh"` dropped and `#line` directives naming the original files;
//! - `KERNELS`: every `extern "C" __global__ void NAME(PARAMS)` with its parameter kinds
//!   (`EMU_TEST_KERNELS` / `EMU_TEST_SOURCES`: the emulator's own test kernels in
//!   `kernels/emu/tests/`, compiled into the emulator only);
//! - `PTX` / `PTX_ISA`: `COMBINED` precompiled by nvcc when one is found (never required);
//! - `EMU_AVAILABLE`: whether the CUDA emulator (`kernels/emu/`, the kernels compiled as C++ over
//!   a fiber runtime) was compiled and linked; it needs a C++17 compiler, and its absence is a
//!   warning, not an error.
//!
//! Kernel author errors (a parameter type the launcher cannot pass, kernels that do not compile
//! as C++ for the emulator, nvcc present but failing) fail the build with `file:line`.

use std::collections::BTreeSet;
use std::env;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    for var in ["NVCC", "CUDA_HOME", "NLI_BERT_CUDA_ARCH", "CXX"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rustc-check-cfg=cfg(nli_emu)");
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into()));
    let out_dir = PathBuf::from(env::var("OUT_DIR").unwrap_or_else(|_| fail("cargo did not set OUT_DIR")));
    let kdir = manifest.join("kernels");

    let sources = list(&kdir, &["cu", "cuh"]);
    let cu: Vec<PathBuf> = sources.iter().filter(|p| ext(p) == "cu").cloned().collect();
    let common = kdir.join("common.cuh");
    let mut units: Vec<Unit> = Vec::new();
    if common.is_file() {
        units.push(Unit::read(&common, "kernels"));
    }
    units.extend(cu.iter().map(|p| Unit::read(p, "kernels")));
    let tests: Vec<Unit> = list(&kdir.join("emu").join("tests"), &["cu"])
        .iter()
        .map(|p| Unit::read(p, "kernels/emu/tests"))
        .collect();

    let kernels = parse_all(units.iter().filter(|u| u.path.ends_with(".cu")));
    let test_kernels = parse_all(tests.iter());
    let mut seen = BTreeSet::new();
    for k in kernels.iter().chain(&test_kernels) {
        if !seen.insert(k.name.clone()) {
            fail(&format!("{}:{}: a second kernel named `{}`", k.file, k.line, k.name));
        }
    }

    let combined = combine(&units, false);
    write(&out_dir.join("kernels_combined.cu"), &combined);
    let ptx = compile_ptx(&out_dir, !cu.is_empty());
    let emu = build_emu(&manifest, &out_dir, &units, &tests, &kernels, &test_kernels);
    if emu {
        println!("cargo:rustc-cfg=nli_emu");
    }

    let mut out = String::new();
    out.push_str("/// Kernel sources (file name, text), embedded by build.rs.\n");
    out.push_str("pub const SOURCES: &[(&str, &str)] = &[\n");
    for f in &sources {
        out.push_str(&format!("    ({:?}, include_str!({:?})),\n", file_name(f), f.display().to_string()));
    }
    out.push_str("];\n");
    out.push_str(
        "/// `common.cuh` then every `kernels/*.cu` (sorted) as one translation unit, `#line`-annotated.\n",
    );
    out.push_str(&format!(
        "pub const COMBINED: &str = include_str!({:?});\n",
        out_dir.join("kernels_combined.cu").display().to_string()
    ));
    out.push_str("/// Every `extern \"C\" __global__` kernel in kernels/*.cu with its parameter kinds.\n");
    out.push_str(&kernel_table("KERNELS", &kernels));
    out.push_str(
        "/// Sources of the emulator's test kernels (kernels/emu/tests/*.cu), valid CUDA of their own.\n",
    );
    out.push_str("pub const EMU_TEST_SOURCES: &[(&str, &str)] = &[\n");
    for f in list(&kdir.join("emu").join("tests"), &["cu"]) {
        out.push_str(&format!("    ({:?}, include_str!({:?})),\n", file_name(&f), f.display().to_string()));
    }
    out.push_str("];\n");
    out.push_str("/// The emulator's own test kernels (kernels/emu/tests/*.cu); not part of `COMBINED`.\n");
    out.push_str(&kernel_table("EMU_TEST_KERNELS", &test_kernels));
    out.push_str("/// `COMBINED` compiled to PTX by nvcc at build time (None without nvcc).\n");
    match &ptx {
        Some((path, _)) => out.push_str(&format!(
            "pub const PTX: Option<&str> = Some(include_str!({:?}));\n",
            path.display().to_string()
        )),
        None => out.push_str("pub const PTX: Option<&str> = None;\n"),
    }
    out.push_str("/// The PTX ISA version of `PTX` (its `.version` line).\n");
    match ptx.as_ref().and_then(|(_, isa)| isa.clone()) {
        Some(isa) => out.push_str(&format!("pub const PTX_ISA: Option<&str> = Some({isa:?});\n")),
        None => out.push_str("pub const PTX_ISA: Option<&str> = None;\n"),
    }
    out.push_str("/// Whether the CUDA emulator (kernels/emu/) was compiled into this binary.\n");
    out.push_str(&format!("pub const EMU_AVAILABLE: bool = {emu};\n"));
    write(&out_dir.join("kernels.rs"), &out);
}

/// Prints `msg` and fails the build.
fn fail(msg: &str) -> ! {
    eprintln!("error: {msg}");
    std::process::exit(1);
}

fn write(path: &Path, text: &str) {
    // Unchanged files keep their mtime, so cargo and cc do not redo work needlessly.
    if fs::read_to_string(path).ok().as_deref() == Some(text) {
        return;
    }
    if let Err(e) = fs::write(path, text) {
        fail(&format!("writing {}: {e}", path.display()));
    }
}

fn ext(p: &Path) -> &str {
    p.extension().and_then(|e| e.to_str()).unwrap_or("")
}

fn file_name(p: &Path) -> String {
    p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
}

/// Files in `dir` with one of the extensions, sorted (none if `dir` does not exist).
fn list(dir: &Path, exts: &[&str]) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.is_file() && exts.contains(&ext(p)))
                .collect()
        })
        .unwrap_or_default();
    files.sort();
    files
}

/// One source file: its display path (`kernels/x.cu`) and text.
struct Unit {
    path: String,
    text: String,
}

impl Unit {
    fn read(p: &Path, dir: &str) -> Unit {
        let text = fs::read_to_string(p).unwrap_or_else(|e| fail(&format!("reading {}: {e}", p.display())));
        Unit { path: format!("{dir}/{}", file_name(p)), text }
    }
}

/// The units as one translation unit. `#include "common.cuh"` and `#pragma once` lines become
/// blank lines (line numbers stay); `emu` additionally marks `__shared__` arrays for poisoning.
fn combine(units: &[Unit], emu: bool) -> String {
    let mut s = String::from("// Generated by build.rs from kernels/: one translation unit.\n");
    for u in units {
        s.push_str(&format!("#line 1 \"{}\"\n", u.path));
        let text = if emu { poison_shared(u) } else { u.text.clone() };
        for line in text.lines() {
            let t: String = line.split_whitespace().collect();
            if t == "#include\"common.cuh\"" || t == "#pragmaonce" {
                s.push('\n');
            } else {
                s.push_str(line);
                s.push('\n');
            }
        }
    }
    s
}

// ---------------------------------------------------------------------------------------------
// A small C++ lexer: enough to find kernel signatures and `__shared__` declarations.

#[derive(Clone, Debug, PartialEq)]
enum Tok {
    Ident(String),
    Str(String),
    Num,
    Punct(char),
}

#[derive(Clone, Debug)]
struct Token {
    tok: Tok,
    line: usize,
    end: usize,
}

/// Tokens of `src` without comments and preprocessor lines.
fn lex(src: &str) -> Vec<Token> {
    let b = src.as_bytes();
    let (mut i, mut line, mut line_start) = (0usize, 1usize, true);
    let mut out = Vec::new();
    while i < b.len() {
        let c = b[i];
        if c == b'\n' {
            line += 1;
            line_start = true;
            i += 1;
        } else if c.is_ascii_whitespace() {
            i += 1;
        } else if c == b'#' && line_start {
            // Preprocessor line, with backslash continuations.
            while i < b.len() && b[i] != b'\n' {
                if b[i] == b'\\' && i + 1 < b.len() && b[i + 1] == b'\n' {
                    line += 1;
                    i += 1;
                }
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'/') {
            while i < b.len() && b[i] != b'\n' {
                i += 1;
            }
        } else if c == b'/' && b.get(i + 1) == Some(&b'*') {
            i += 2;
            while i < b.len() && !(b[i] == b'*' && b.get(i + 1) == Some(&b'/')) {
                line += usize::from(b[i] == b'\n');
                i += 1;
            }
            i += 2;
        } else {
            line_start = false;
            let start = i;
            let tok = if c.is_ascii_alphabetic() || c == b'_' {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_') {
                    i += 1;
                }
                Tok::Ident(src[start..i].to_string())
            } else if c.is_ascii_digit() || (c == b'.' && b.get(i + 1).is_some_and(|d| d.is_ascii_digit())) {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'_' || b[i] == b'.') {
                    let exp = matches!(b[i], b'e' | b'E' | b'p' | b'P');
                    i += 1;
                    if exp && i < b.len() && (b[i] == b'+' || b[i] == b'-') {
                        i += 1;
                    }
                }
                Tok::Num
            } else if c == b'"' || c == b'\'' {
                i += 1;
                while i < b.len() && b[i] != c && b[i] != b'\n' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(b.len());
                Tok::Str(src[start + 1..i.saturating_sub(1).max(start + 1)].to_string())
            } else {
                i += 1;
                Tok::Punct(c as char)
            };
            out.push(Token { tok, line, end: i });
        }
    }
    out
}

fn is_ident(t: &Token, s: &str) -> bool {
    matches!(&t.tok, Tok::Ident(x) if x == s)
}

fn is_punct(t: &Token, c: char) -> bool {
    t.tok == Tok::Punct(c)
}

/// Index of the token closing the bracket opened at `open` (or the last token).
fn matching(toks: &[Token], open: usize) -> usize {
    let mut depth = 0i32;
    for (j, t) in toks.iter().enumerate().skip(open) {
        match t.tok {
            Tok::Punct('(' | '[' | '{') => depth += 1,
            Tok::Punct(')' | ']' | '}') => {
                depth -= 1;
                if depth == 0 {
                    return j;
                }
            }
            _ => {}
        }
    }
    toks.len().saturating_sub(1)
}

/// `toks` split at commas outside brackets.
fn split_commas(toks: &[Token]) -> Vec<&[Token]> {
    let (mut parts, mut depth, mut start) = (Vec::new(), 0i32, 0usize);
    for (j, t) in toks.iter().enumerate() {
        match t.tok {
            Tok::Punct('(' | '[' | '{' | '<') => depth += 1,
            Tok::Punct(')' | ']' | '}' | '>') => depth -= 1,
            Tok::Punct(',') if depth == 0 => {
                parts.push(&toks[start..j]);
                start = j + 1;
            }
            _ => {}
        }
    }
    parts.push(&toks[start..]);
    parts
}

// ---------------------------------------------------------------------------------------------
// Kernel signatures.

struct Kernel {
    name: String,
    file: String,
    line: usize,
    /// Kind codes: p (pointer), i, u, l (long long), m (unsigned long long), f, d.
    kinds: Vec<char>,
}

fn parse_all<'a>(units: impl Iterator<Item = &'a Unit>) -> Vec<Kernel> {
    units.flat_map(|u| parse_kernels(u).unwrap_or_else(|e| fail(&e))).collect()
}

/// Every `extern "C" __global__ void NAME(PARAMS)` in `u`; a `__global__` function that is not
/// `extern "C"` or a parameter of another type is an error naming `file:line`.
fn parse_kernels(u: &Unit) -> Result<Vec<Kernel>, String> {
    let toks = lex(&u.text);
    let mut kernels = Vec::new();
    let mut claimed = BTreeSet::new();
    let mut i = 0;
    while i < toks.len() {
        if is_ident(&toks[i], "extern") && toks.get(i + 1).is_some_and(|t| t.tok == Tok::Str("C".into())) {
            let (mut j, mut global, mut is_void, mut name) = (i + 2, None, false, None::<String>);
            while j < toks.len() {
                match &toks[j].tok {
                    Tok::Ident(x) if x == "__global__" => global = Some(j),
                    Tok::Ident(x) if x == "__launch_bounds__" => j = matching(&toks, j + 1),
                    Tok::Ident(x) => {
                        is_void |= x == "void";
                        name = Some(x.clone());
                    }
                    Tok::Punct('(') => break,
                    Tok::Punct(';' | '{' | '}') => {
                        name = None;
                        break;
                    }
                    _ => {}
                }
                j += 1;
            }
            if let (Some(g), Some(name)) = (global, name) {
                claimed.insert(g);
                let line = toks[i].line;
                if !is_void {
                    return Err(format!("{}:{line}: kernel `{name}` must return void", u.path));
                }
                let close = matching(&toks, j);
                let kinds = parse_params(&toks[j + 1..close], &u.path, &name)?;
                kernels.push(Kernel { name, file: u.path.clone(), line, kinds });
                i = close;
            }
        }
        i += 1;
    }
    for (j, t) in toks.iter().enumerate() {
        if is_ident(t, "__global__") && !claimed.contains(&j) {
            return Err(format!(
                "{}:{}: a __global__ function must be declared `extern \"C\" __global__ void NAME(...)` \
                 (the launcher finds kernels by their unmangled name)",
                u.path, t.line
            ));
        }
    }
    Ok(kernels)
}

fn parse_params(toks: &[Token], file: &str, kernel: &str) -> Result<Vec<char>, String> {
    let parts = split_commas(toks);
    if parts.len() == 1 && (parts[0].is_empty() || (parts[0].len() == 1 && is_ident(&parts[0][0], "void"))) {
        return Ok(Vec::new());
    }
    let mut kinds = Vec::new();
    for (n, p) in parts.iter().enumerate() {
        let line = p.first().map(|t| t.line).unwrap_or(0);
        let shown = p
            .iter()
            .map(|t| match &t.tok {
                Tok::Ident(s) => s.clone(),
                Tok::Punct(c) => c.to_string(),
                Tok::Str(s) => format!("{s:?}"),
                Tok::Num => "0".into(),
            })
            .collect::<Vec<_>>()
            .join(" ");
        let err = |why: &str| {
            format!(
                "{file}:{line}: kernel `{kernel}` parameter {n} `{shown}`: {why} (kernel parameters must be \
                 pointers, int, unsigned int, long long, unsigned long long, float or double)"
            )
        };
        if p.iter().any(|t| is_punct(t, '*') || is_punct(t, '[')) {
            kinds.push('p');
            continue;
        }
        if p.iter().any(|t| is_punct(t, '&')) {
            return Err(err("references cannot be passed to a kernel"));
        }
        let mut idents: Vec<&str> = p
            .iter()
            .filter_map(|t| match &t.tok {
                Tok::Ident(s) => Some(s.as_str()),
                _ => None,
            })
            .filter(|s| !matches!(*s, "const" | "volatile" | "__restrict__" | "__restrict" | "restrict"))
            .collect();
        if p.iter().any(|t| !matches!(t.tok, Tok::Ident(_))) {
            return Err(err("unsupported syntax"));
        }
        let keywords =
            ["int", "unsigned", "signed", "long", "short", "char", "float", "double", "bool", "void"];
        if idents.last().is_some_and(|l| !keywords.contains(l)) && idents.len() > 1 {
            idents.pop();
        }
        let ty = idents.join(" ");
        kinds.push(match ty.as_str() {
            "int" | "signed" | "signed int" => 'i',
            "unsigned" | "unsigned int" => 'u',
            "long long" | "long long int" | "signed long long" | "signed long long int" => 'l',
            "unsigned long long" | "unsigned long long int" => 'm',
            "float" => 'f',
            "double" => 'd',
            _ => return Err(err(&format!("type `{ty}` is not supported"))),
        });
    }
    Ok(kinds)
}

fn kernel_table(name: &str, kernels: &[Kernel]) -> String {
    let mut s = format!("pub const {name}: &[(&str, &[ArgKind])] = &[\n");
    for k in kernels {
        let kinds: Vec<&str> = k
            .kinds
            .iter()
            .map(|c| match c {
                'p' => "ArgKind::Ptr",
                'i' => "ArgKind::I32",
                'u' => "ArgKind::U32",
                'l' => "ArgKind::I64",
                'm' => "ArgKind::U64",
                'f' => "ArgKind::F32",
                _ => "ArgKind::F64",
            })
            .collect();
        s.push_str(&format!("    ({:?}, &[{}]),\n", k.name, kinds.join(", ")));
    }
    s.push_str("];\n");
    s
}

// ---------------------------------------------------------------------------------------------
// The emulator's copy of the sources: `__shared__` arrays get poisoned on first use in a block.

/// `u.text` with `NLI_EMU_SHARED_POISON(name);` appended (same line) to every `__shared__`
/// declaration inside a function body, so the emulator fills it with NaN bytes once per block.
fn poison_shared(u: &Unit) -> String {
    let toks = lex(&u.text);
    let mut inserts: Vec<(usize, String)> = Vec::new();
    let mut code_stack: Vec<bool> = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        match t.tok {
            Tok::Punct('{') => {
                let prev = i.checked_sub(1).map(|p| &toks[p]);
                let after_signature = prev.is_some_and(|p| {
                    is_punct(p, ')')
                        || ["const", "noexcept", "override", "final"].iter().any(|k| is_ident(p, k))
                });
                code_stack.push(code_stack.last().copied().unwrap_or(false) || after_signature);
            }
            Tok::Punct('}') => {
                code_stack.pop();
            }
            _ => {}
        }
        let in_code = code_stack.last().copied().unwrap_or(false);
        if !in_code || !is_ident(t, "__shared__") || (i > 0 && is_ident(&toks[i - 1], "extern")) {
            continue;
        }
        let mut j = i + 1;
        while j < toks.len() && !is_punct(&toks[j], ';') {
            if matches!(toks[j].tok, Tok::Punct('(' | '[' | '{')) {
                j = matching(&toks, j);
            }
            j += 1;
        }
        if j >= toks.len() {
            continue;
        }
        let mut text = String::new();
        for decl in split_commas(&toks[i + 1..j]) {
            let end = decl.iter().position(|t| is_punct(t, '[') || is_punct(t, '=')).unwrap_or(decl.len());
            if let Some(Tok::Ident(name)) =
                decl[..end].iter().rev().find(|t| matches!(t.tok, Tok::Ident(_))).map(|t| &t.tok)
            {
                text.push_str(&format!(" NLI_EMU_SHARED_POISON({name});"));
            }
        }
        inserts.push((toks[j].end, text));
    }
    let mut s = u.text.clone();
    for (at, text) in inserts.into_iter().rev() {
        s.insert_str(at, &text);
    }
    s
}

// ---------------------------------------------------------------------------------------------
// The emulator: the kernels as C++ over kernels/emu/runtime.cpp, a static library.

fn build_emu(
    manifest: &Path,
    out: &Path,
    units: &[Unit],
    tests: &[Unit],
    kernels: &[Kernel],
    test_kernels: &[Kernel],
) -> bool {
    let emu_dir = manifest.join("kernels").join("emu");
    let mut build = cc::Build::new();
    build.cpp(true);
    let usable = build
        .try_get_compiler()
        .ok()
        .and_then(|tool| tool.to_command().arg("--version").output().ok())
        .is_some_and(|o| o.status.success());
    if !usable {
        println!(
            "cargo:warning=no C++ compiler found (install g++, or set CXX): the CUDA emulator is not built, so \
             the `emu` device and its tests are unavailable"
        );
        return false;
    }
    write(&out.join("kernels_combined_emu.cu"), &combine(units, true));
    write(&out.join("kernels_emu_tests.cu"), &combine(tests, true));
    let header = emu_dir.join("emu.h");
    for (file, src, table, ks) in [
        ("emu_kernels.cpp", "kernels_combined_emu.cu", "nli_emu_kernels_main", kernels),
        ("emu_test_kernels.cpp", "kernels_emu_tests.cu", "nli_emu_kernels_test", test_kernels),
    ] {
        let mut s = String::from("// Generated by build.rs: the CUDA kernels compiled for the emulator.\n");
        s.push_str("#define NLI_EMU 1\n");
        s.push_str(&format!("#include \"{}\"\n", header.display()));
        s.push_str(&format!("#include \"{}\"\n", out.join(src).display()));
        s.push_str("namespace {\n");
        for k in ks {
            s.push_str(&format!(
                "static_assert(::nli_emu::signature_is<decltype(&{n})>(\"{sig}\"), \"build.rs read the \
                 parameters of kernel {n} ({f}:{l}) as '{sig}', but they have other C++ types\");\n\
                 void nli_emu_trampoline_{n}(void** args) {{ ::nli_emu::invoke(&{n}, args); }}\n",
                n = k.name,
                sig = k.kinds.iter().collect::<String>(),
                f = k.file,
                l = k.line,
            ));
        }
        s.push_str("}  // namespace\n");
        s.push_str(&format!("extern \"C\" const ::nli_emu::KernelEntry {table}[] = {{\n"));
        for k in ks {
            s.push_str(&format!(
                "    {{\"{n}\", &nli_emu_trampoline_{n}, {a}}},\n",
                n = k.name,
                a = k.kinds.len()
            ));
        }
        s.push_str("    {nullptr, nullptr, 0},\n};\n");
        write(&out.join(file), &s);
    }
    build
        .std("c++17")
        .opt_level(2)
        .warnings(true)
        .extra_warnings(false)
        .flag("-Wno-unknown-pragmas")
        .flag("-fno-strict-aliasing")
        .flag_if_supported("-ffp-contract=off")
        .include(&emu_dir)
        .file(emu_dir.join("runtime.cpp"))
        .file(out.join("emu_kernels.cpp"))
        .file(out.join("emu_test_kernels.cpp"));
    if let Err(e) = build.try_compile("nli_emu") {
        fail(&format!(
            "the kernels do not compile as C++ for the CUDA emulator (kernels/emu/); the compiler's messages \
             are above. {e}"
        ));
    }
    true
}

// ---------------------------------------------------------------------------------------------
// PTX with nvcc, when there is one.

fn find_nvcc() -> Option<PathBuf> {
    if let Some(p) = env::var_os("NVCC").filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    if let Some(h) = env::var_os("CUDA_HOME").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(h).join("bin").join("nvcc");
        if p.is_file() {
            return Some(p);
        }
    }
    env::split_paths(&env::var_os("PATH")?).map(|d| d.join("nvcc")).find(|p| p.is_file())
}

/// `(path of the PTX file, its ISA version)`, or None without a working nvcc.
fn compile_ptx(out: &Path, any_kernel: bool) -> Option<(PathBuf, Option<String>)> {
    if !any_kernel {
        return None;
    }
    let nvcc =
        find_nvcc().filter(|n| Command::new(n).arg("--version").output().is_ok_and(|o| o.status.success()));
    let Some(nvcc) = nvcc else {
        println!(
            "cargo:warning=nvcc not found ($NVCC, $CUDA_HOME/bin, PATH): no precompiled PTX; the CUDA device \
             compiles the kernels with NVRTC at run time"
        );
        return None;
    };
    let arch =
        env::var("NLI_BERT_CUDA_ARCH").ok().filter(|a| !a.is_empty()).unwrap_or_else(|| "sm_80".into());
    let ptx = out.join("kernels.ptx");
    let output = Command::new(&nvcc)
        .args(["-ptx", &format!("-arch={arch}"), "-O3", "-std=c++17", "-o"])
        .arg(&ptx)
        .arg(out.join("kernels_combined.cu"))
        .output()
        .unwrap_or_else(|e| fail(&format!("running {}: {e}", nvcc.display())));
    if !output.status.success() {
        fail(&format!(
            "{} failed to compile the kernels to PTX for {arch}:\n{}{}",
            nvcc.display(),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    let text = fs::read_to_string(&ptx).unwrap_or_else(|e| fail(&format!("reading {}: {e}", ptx.display())));
    let isa = text
        .lines()
        .find_map(|l| l.trim().strip_prefix(".version"))
        .map(|v| v.trim().to_string())
        .filter(|v| !v.is_empty());
    Some((ptx, isa))
}
