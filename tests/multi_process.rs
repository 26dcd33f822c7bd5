//! Data parallel over processes (`src/train/dist.rs`): the launchers' variables (torchrun, SLURM,
//! Open MPI) and the TCP rendezvous, with real processes on 127.0.0.1 — this test executable
//! started again as each rank (`child_rank` does the rank's part when `NLI_BERT_TEST_ROLE` is
//! set): the payload reaches every rank and a collective sums in rank order; a rank that starts
//! before rank 0 listens; a rank that never comes, a wrong world size, another fingerprint and a
//! rank that dies mid-run each end every rank with an error naming the cause, within the timeout.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nli_bert::backend::cpu::Cpu;
use nli_bert::train::dist::{DistEnv, Rendezvous};
use nli_bert::train::parallel::{rank_timeout, Communicator};

fn vars<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
    move |k| pairs.iter().find(|(n, _)| *n == k).map(|(_, v)| v.to_string())
}

#[test]
fn launcher_variables_are_read() {
    let torchrun = [
        ("RANK", "2"),
        ("WORLD_SIZE", "4"),
        ("LOCAL_RANK", "0"),
        ("MASTER_ADDR", "node1"),
        ("MASTER_PORT", "1234"),
    ];
    let e = DistEnv::from_vars(vars(&torchrun)).unwrap().unwrap();
    assert_eq!(
        e,
        DistEnv {
            rank: 2,
            world: 4,
            local_rank: 0,
            master_addr: "node1".into(),
            master_port: 1234,
            launcher: "torchrun"
        }
    );
    let mpi = [
        ("OMPI_COMM_WORLD_RANK", "1"),
        ("OMPI_COMM_WORLD_SIZE", "2"),
        ("OMPI_COMM_WORLD_LOCAL_RANK", "1"),
        ("MASTER_ADDR", "10.0.0.1"),
    ];
    let e = DistEnv::from_vars(vars(&mpi)).unwrap().unwrap();
    assert_eq!((e.rank, e.world, e.local_rank, e.master_port, e.launcher), (1, 2, 1, 29500, "openmpi"));
    let slurm = [("SLURM_PROCID", "3"), ("SLURM_NTASKS", "8"), ("SLURM_LOCALID", "3"), ("MASTER_ADDR", "n0")];
    let e = DistEnv::from_vars(vars(&slurm)).unwrap().unwrap();
    assert_eq!((e.rank, e.world, e.local_rank, e.launcher), (3, 8, 3, "slurm"));
    // under torchrun, whose agent listens on MASTER_PORT, the rendezvous takes the next port
    let elastic = [
        ("RANK", "1"),
        ("WORLD_SIZE", "2"),
        ("MASTER_ADDR", "a"),
        ("MASTER_PORT", "29400"),
        ("TORCHELASTIC_RUN_ID", "x"),
    ];
    assert_eq!(DistEnv::from_vars(vars(&elastic)).unwrap().unwrap().master_port, 29401);
    let chosen = [("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a"), ("NLI_BERT_RDZV_PORT", "4000")];
    assert_eq!(DistEnv::from_vars(vars(&chosen)).unwrap().unwrap().master_port, 4000);
    // one process: nothing to do
    assert_eq!(DistEnv::from_vars(vars(&[])).unwrap(), None);
    assert_eq!(DistEnv::from_vars(vars(&[("RANK", "0"), ("WORLD_SIZE", "1")])).unwrap(), None);
    assert_eq!(DistEnv::from_vars(vars(&[("SLURM_PROCID", "0"), ("SLURM_NTASKS", "1")])).unwrap(), None);
    // bad settings say what to do
    for (bad, want) in [
        (&[("RANK", "1"), ("WORLD_SIZE", "2")][..], "MASTER_ADDR is not set"),
        (&[("RANK", "2"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a")][..], "must be below"),
        (&[("RANK", "x"), ("WORLD_SIZE", "2")][..], "not a whole number"),
        (&[("RANK", "1")][..], "WORLD_SIZE is not"),
        (
            &[("RANK", "1"), ("WORLD_SIZE", "2"), ("MASTER_ADDR", "a"), ("MASTER_PORT", "99999")][..],
            "not a port",
        ),
    ] {
        let e = DistEnv::from_vars(vars(bad)).unwrap_err().to_string();
        assert!(e.contains(want), "{bad:?}: {e}");
    }
}

/// One rank's part, when this executable is started as a rank by the tests below.
#[test]
fn child_rank() {
    let Ok(role) = std::env::var("NLI_BERT_TEST_ROLE") else { return };
    let env = DistEnv::from_env().unwrap().unwrap();
    let fp: u64 = std::env::var("NLI_BERT_TEST_FP").ok().and_then(|v| v.parse().ok()).unwrap_or(7);
    if let Some(ms) = std::env::var("NLI_BERT_TEST_DELAY_MS").ok().and_then(|v| v.parse().ok()) {
        std::thread::sleep(Duration::from_millis(ms));
    }
    let r = match Rendezvous::meet(&env, fp, b"nccl-unique-id-0123", rank_timeout()) {
        Ok(r) => r,
        Err(e) => {
            println!("ERROR {e}");
            std::process::exit(1);
        }
    };
    println!("PAYLOAD {}", String::from_utf8_lossy(&r.payload));
    if role == "die" {
        std::process::exit(3);
    }
    let comm = r.into_comm();
    for round in 0..3 {
        let mut v = [env.rank as f64, 1.0, round as f64];
        match <_ as Communicator<Cpu<f64>>>::all_reduce_host(&comm, &mut v) {
            Ok(()) => println!("SUM {} {} {}", v[0], v[1], v[2]),
            Err(e) => {
                println!("ERROR {e}");
                std::process::exit(1);
            }
        }
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// Starts rank `rank` of `world` on `port` with extra variables.
fn spawn(rank: usize, world: usize, port: u16, extra: &[(&str, String)]) -> Child {
    let mut c = Command::new(std::env::current_exe().unwrap());
    c.args(["--exact", "child_rank", "--nocapture", "--test-threads=1"])
        .env("NLI_BERT_TEST_ROLE", "rank")
        .env("RANK", rank.to_string())
        .env("WORLD_SIZE", world.to_string())
        .env("MASTER_ADDR", "127.0.0.1")
        .env("MASTER_PORT", port.to_string())
        // generous for a loaded machine; the test of a rank that never comes sets 3 s
        .env("NLI_BERT_RANK_TIMEOUT", "30")
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    for (k, v) in extra {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// Waits for every child: (exit success, the lines it printed that start with one of our tags).
fn finish(children: Vec<Child>) -> Vec<(bool, Vec<String>)> {
    children
        .into_iter()
        .map(|c| {
            let o = c.wait_with_output().unwrap();
            // (the harness prints "test child_rank ... " in front of the first line)
            let lines = String::from_utf8_lossy(&o.stdout)
                .lines()
                .filter_map(|l| {
                    ["PAYLOAD", "SUM", "ERROR"].iter().find_map(|t| l.find(t)).map(|i| l[i..].to_string())
                })
                .collect();
            (o.status.success(), lines)
        })
        .collect()
}

#[test]
fn ranks_meet_exchange_the_id_and_sum_in_rank_order() {
    let port = free_port();
    // rank 2 starts first (rank 0 is not listening yet: it retries), rank 0 half a second later
    let mut kids = vec![spawn(2, 3, port, &[])];
    std::thread::sleep(Duration::from_millis(500));
    kids.insert(0, spawn(0, 3, port, &[]));
    kids.insert(1, spawn(1, 3, port, &[("NLI_BERT_TEST_DELAY_MS", "300".into())]));
    for (rank, (ok, lines)) in finish(kids).into_iter().enumerate() {
        assert!(ok, "rank {rank}: {lines:?}");
        assert_eq!(lines[0], "PAYLOAD nccl-unique-id-0123", "rank {rank}");
        let sums: Vec<&str> = lines[1..].iter().map(String::as_str).collect();
        assert_eq!(sums, ["SUM 3 3 0", "SUM 3 3 3", "SUM 3 3 6"], "rank {rank}");
    }
}

#[test]
fn a_rank_that_never_comes_ends_the_run_naming_it() {
    let port = free_port();
    let start = Instant::now();
    let short = [("NLI_BERT_RANK_TIMEOUT", "3".to_string())];
    let kids = vec![spawn(0, 3, port, &short), spawn(1, 3, port, &short)];
    let out = finish(kids);
    assert!(start.elapsed() < Duration::from_secs(30));
    for (rank, (ok, lines)) in out.iter().enumerate() {
        assert!(!ok, "rank {rank} must fail");
        let l = lines.join(" | ");
        assert!(l.contains("rank 2 did not connect"), "rank {rank}: {l}");
    }
}

#[test]
fn a_wrong_world_size_or_fingerprint_is_refused_at_start() {
    let port = free_port();
    let kids = vec![spawn(0, 2, port, &[]), spawn(1, 3, port, &[])];
    for (rank, (ok, lines)) in finish(kids).into_iter().enumerate() {
        assert!(!ok, "rank {rank} must fail");
        let l = lines.join(" | ");
        assert!(
            l.contains("rank 1 was started with a world of 3 processes, rank 0 with 2"),
            "rank {rank}: {l}"
        );
    }
    let port = free_port();
    let kids = vec![spawn(0, 2, port, &[]), spawn(1, 2, port, &[("NLI_BERT_TEST_FP", "8".into())])];
    for (rank, (ok, lines)) in finish(kids).into_iter().enumerate() {
        assert!(!ok, "rank {rank} must fail");
        let l = lines.join(" | ");
        assert!(l.contains("rank 1 runs another model or other settings"), "rank {rank}: {l}");
    }
}

#[test]
fn a_rank_that_dies_mid_run_ends_the_others_naming_it() {
    let port = free_port();
    let start = Instant::now();
    let die = [("NLI_BERT_TEST_ROLE", "die".to_string())];
    let kids = vec![spawn(0, 3, port, &[]), spawn(1, 3, port, &die), spawn(2, 3, port, &[])];
    let out = finish(kids);
    assert!(start.elapsed() < Duration::from_secs(30));
    let (ok0, l0) = &out[0];
    assert!(!ok0);
    assert!(l0.join(" ").contains("rank 1 did not reach a metrics all-reduce"), "{l0:?}");
    let (ok2, l2) = &out[2];
    assert!(!ok2);
    assert!(l2.join(" ").contains("rank 1 did not reach"), "rank 2 hears which rank failed: {l2:?}");
}
