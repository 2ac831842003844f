//! The `etcd-lifeboat` binary: parse the command, set up logging, run, map the error to an exit code.

use etcd_lifeboat::{cli, config, error, logging, run};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let env = config::Env::from_process();
    let code = match real_main(&args, &env) {
        Ok(()) => error::exit::OK,
        Err(e) => {
            eprintln!("etcd-lifeboat: error: {}", error::chain(&e));
            e.exit_code()
        }
    };
    std::process::exit(code);
}

fn real_main(args: &[String], env: &config::Env) -> error::Result<()> {
    let cmd = cli::parse(args)?;
    logging::init(&config::LogConfig::from_env(env)?);
    run::run(cmd, env)
}
