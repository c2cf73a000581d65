//! `cargo bench --bench edge [-- --smoke] [-- --json FILE]`: direct vs nats-edge vs HAProxy.

mod harness;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mode = if args.iter().any(|a| a == "--smoke") {
        harness::Mode::Smoke
    } else {
        harness::Mode::Full
    };
    let report = harness::run(mode, env!("CARGO_BIN_EXE_nats-edge"));
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
