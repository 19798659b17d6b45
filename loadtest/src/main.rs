fn main() {
    eprintln!("loadtest: not built yet (issue 4)");
    std::process::exit(2);
}
