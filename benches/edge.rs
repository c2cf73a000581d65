//! `cargo bench --bench edge [-- --smoke] [-- --json FILE] [-- --only tcp,tls,ws,wsdeflate]
//! [-- --baseline OTHER_NATS_EDGE_BINARY]`: direct vs nats-edge vs HAProxy (vs another build).
//! `cargo bench --bench edge -- --callgrind`: instructions per forwarded message (plain, with
//! ACL rules, and with rewrite + tagging).
//! `cargo bench --bench edge -- --filter-cost`: rewrite + tagging against plain, 128 B.

mod harness;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.iter().any(|a| a == "--callgrind") {
        let bin = env!("CARGO_BIN_EXE_nats-edge");
        for setup in harness::callgrind_setups() {
            match harness::callgrind_instructions_per_message(bin, &setup) {
                Some(ir) => println!(
                    "callgrind: {ir:.0} instructions per 128 B message through {} ({:.0} per forwarded op)",
                    setup.name,
                    ir / 2.0
                ),
                None => eprintln!("callgrind: valgrind is not installed"),
            }
        }
        return;
    }
    if args.iter().any(|a| a == "--filter-cost") {
        let report = harness::filter_cost::run(env!("CARGO_BIN_EXE_nats-edge"));
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
        return;
    }
    let mode = if args.iter().any(|a| a == "--smoke") {
        harness::Mode::Smoke
    } else {
        harness::Mode::Full
    };
    let groups = match args
        .iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1))
    {
        Some(list) => match harness::Groups::parse(list) {
            Ok(groups) => groups,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(2);
            }
        },
        None => harness::Groups::ALL,
    };
    let baseline = args
        .iter()
        .position(|a| a == "--baseline")
        .and_then(|i| args.get(i + 1));
    let report = harness::run_groups(
        mode,
        env!("CARGO_BIN_EXE_nats-edge"),
        groups,
        baseline.map(String::as_str),
    );
    println!("{}", harness::table(&report));
    let json = serde_json::to_string_pretty(&report).unwrap_or_default();
    match args
        .iter()
        .position(|a| a == "--json")
        .and_then(|i| args.get(i + 1))
    {
        Some(path) => {
            if let Err(e) = std::fs::write(path, &json) {
                eprintln!("writing {path}: {e}");
            }
        }
        None => println!("{json}"),
    }
}
