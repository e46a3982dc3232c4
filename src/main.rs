#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    flotilla::cli::main(flotilla::catalogue::Catalogue::builtin())
}
