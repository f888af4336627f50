//! `alp`: the whole suite in one process (`alp dev`), one service (`alp serve`), migrations.

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = alp::cli::Cli::parse();
    alp_runtime::logging::init(&cli.log);
    match alp::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(err) => {
            tracing::error!("{err:#}");
            eprintln!("error: {err:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
