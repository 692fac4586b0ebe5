//! Writes a target's seeds, nasty cases and committed corpus into a folder, as the starting
//! corpus of a cargo-fuzz run (`fuzz/libfuzzer.sh`): `fuzz-corpus TARGET DIR`.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let [_, target, dir] = args.as_slice() else {
        eprintln!("usage: fuzz-corpus TARGET DIR");
        std::process::exit(2);
    };
    let dir = std::path::Path::new(dir);
    std::fs::create_dir_all(dir).expect("create the corpus folder");
    let mut inputs = ember_fuzz::seeds(target);
    inputs.extend(ember_fuzz::nasty::cases().into_iter().filter(|(t, _, _)| t == target).map(|(_, _, b)| b));
    inputs.extend(ember_fuzz::corpus(target).into_iter().map(|(_, b)| b));
    for (i, input) in inputs.iter().enumerate() {
        std::fs::write(dir.join(format!("start-{i:03}")), input).expect("write a corpus file");
    }
    println!("{} inputs in {}", inputs.len(), dir.display());
}
