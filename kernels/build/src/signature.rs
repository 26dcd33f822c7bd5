//! Kernel signatures: every `extern "C" __global__ void NAME(PARAMS)` of a unit, with the kind of
//! each parameter, so that the launch code can check its arguments against them. A `__global__`
//! function that is not `extern "C"`, returns something, or takes a parameter the launch code
//! cannot pass (a reference, a struct, a template type) is an error naming `file:line`.

use crate::lex::{is_ident, is_punct, lex, matching, split_commas, Tok, Token};
use crate::Unit;
use std::collections::BTreeSet;

/// A kernel found in a source file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Kernel {
    /// Its (unmangled) name.
    pub name: String,
    /// The file it is in.
    pub file: String,
    /// The line of its `extern "C"`.
    pub line: usize,
    /// Kind codes: p (pointer), i, u, l (long long), m (unsigned long long), f, d.
    pub kinds: Vec<char>,
}

/// The kernels of every unit, checked for duplicate names across all of them.
pub fn parse_all<'a>(units: impl IntoIterator<Item = &'a Unit>) -> Result<Vec<Kernel>, String> {
    let mut all: Vec<Kernel> = Vec::new();
    for u in units {
        for k in parse_kernels(u)? {
            if let Some(first) = all.iter().find(|x| x.name == k.name) {
                return Err(format!(
                    "{}:{}: a second kernel named `{}` (the first is at {}:{})",
                    k.file, k.line, k.name, first.file, first.line
                ));
            }
            all.push(k);
        }
    }
    Ok(all)
}

/// Every `extern "C" __global__ void NAME(PARAMS)` in `u`; a `__global__` function that is not
/// `extern "C"` or a parameter of another type is an error naming `file:line`.
pub fn parse_kernels(u: &Unit) -> Result<Vec<Kernel>, String> {
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

pub fn parse_params(toks: &[Token], file: &str, kernel: &str) -> Result<Vec<char>, String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(src: &str) -> Result<Vec<Kernel>, String> {
        parse_kernels(&Unit::new("kernels/t.cu", src))
    }

    fn kinds(src: &str) -> Vec<(String, String)> {
        parse(src)
            .unwrap_or_else(|e| panic!("{e}"))
            .into_iter()
            .map(|k| (k.name, k.kinds.into_iter().collect()))
            .collect()
    }

    #[test]
    fn pointers_consts_and_scalars() {
        let src = r#"
#include "common.cuh"
extern "C" __global__ void a(float* __restrict__ out, const float* __restrict__ in, long long n,
                             unsigned long long seed, unsigned int step, int c, float scale,
                             double d, unsigned short* h, const int* const ids, float x[]) {}
extern "C" __global__ void __launch_bounds__(256, 2) b(void) {}
extern "C" __global__ void c() {}
__device__ float helper(float& x) { return x; }
"#;
        assert_eq!(
            kinds(src),
            [("a".into(), "pplmuifdppp".into()), ("b".into(), String::new()), ("c".into(), String::new())]
        );
        let k = &parse(src).unwrap()[0];
        assert_eq!((k.file.as_str(), k.line), ("kernels/t.cu", 3));
    }

    #[test]
    fn a_kernel_over_several_lines_after_comments() {
        let src = "// extern \"C\" __global__ void no(int&)\n/* __global__ */\nextern \"C\"\n__global__\nvoid\nk(int\n n, // count\n float* p) {}";
        assert_eq!(kinds(src), [("k".into(), "ip".into())]);
    }

    #[test]
    fn kernels_the_launcher_cannot_call_are_refused_with_file_and_line() {
        let cases = [
            ("extern \"C\" __global__ void k(float& x) {}", "references cannot be passed"),
            ("struct S { int a; };\nextern \"C\" __global__ void k(S s) {}", "type `S` is not supported"),
            ("extern \"C\" __global__ void k(int n = 3) {}", "unsupported syntax"),
            ("extern \"C\" __global__ void k(NLI_REAL x) {}", "type `NLI_REAL` is not supported"),
            ("extern \"C\" __global__ void k(bool b) {}", "type `bool` is not supported"),
            ("extern \"C\" __global__ int k(int n) {}", "must return void"),
            ("__global__ void k(int n) {}", "extern \\\"C\\\" __global__ void NAME"),
            ("template <typename T>\n__global__ void k(T* x) {}", "must be declared `extern"),
        ];
        for (src, want) in cases {
            let e = parse(src).err().unwrap_or_else(|| panic!("accepted: {src}"));
            let want = want.replace("\\\"", "\"");
            assert!(e.starts_with("kernels/t.cu:") && e.contains(&want), "{src}\n  gave: {e}");
        }
    }

    #[test]
    fn a_second_kernel_of_the_same_name_is_refused() {
        let a = Unit::new("kernels/a.cu", "extern \"C\" __global__ void k(int n) {}");
        let b = Unit::new("kernels/b.cu", "\nextern \"C\" __global__ void k(float x) {}");
        let e = parse_all([&a, &b]).unwrap_err();
        assert!(
            e.contains("kernels/b.cu:2: a second kernel named `k` (the first is at kernels/a.cu:1)"),
            "{e}"
        );
        assert_eq!(parse_all([&a]).unwrap().len(), 1);
    }
}
