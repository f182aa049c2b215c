//! Generates a signing key pair: `cargo run -p duli-firmware --example keygen -- DIR NAME`
//! writes `DIR/NAME.pk8` (private, 0600) and `DIR/NAME.pub`. `duli firmware keygen` does
//! the same from the product binary.

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if args.len() != 3 {
        eprintln!("usage: keygen DIR NAME");
        std::process::exit(2);
    }
    match duli_firmware::keys::write_keypair(std::path::Path::new(&args[1]), &args[2]) {
        Ok(files) => println!(
            "private key: {}\npublic key:  {} (id {})",
            files.private.display(),
            files.public.display(),
            files.key.id()
        ),
        Err(e) => {
            eprintln!("keygen: {e}");
            std::process::exit(1);
        }
    }
}
