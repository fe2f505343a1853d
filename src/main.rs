//! The `css-kafka-bridge` binary: parses the command line, sets up logging and
//! hands over to the library.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use css_kafka_bridge::commands::{self, CheckArgs, SpoolDrainArgs, TailArgs};
use css_kafka_bridge::config::{Config, LogFormat};
use css_kafka_bridge::{App, app, downstream, telemetry};

/// Receives Tencent Cloud CSS push error callbacks and publishes one Avro record
/// per error detail to Kafka.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// Log format.
    #[arg(
        long,
        env = "BRIDGE_LOG_FORMAT",
        value_enum,
        default_value_t,
        global = true
    )]
    log_format: LogFormat,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the HTTP service.
    Serve(Box<Config>),
    /// Consume the topic and print the decoded records as JSON lines.
    Tail(TailArgs),
    /// Validate a callback file and print the records it would produce (no Kafka).
    Check(CheckArgs),
    /// Print the record schema: the Avro schema, or the Flink SQL table or Spark
    /// DDL derived from it.
    Schema(downstream::SchemaArgs),
    /// Work with a spool directory.
    #[command(subcommand)]
    Spool(SpoolCommand),
}

#[derive(Debug, Subcommand)]
enum SpoolCommand {
    /// Publish everything in a spool directory to Kafka and exit once it is
    /// empty: for the volume of a replica that was scaled away.
    Drain(SpoolDrainArgs),
}

/// An error that ends a command is its last log line (with its causes, one
/// line: a JSON log stays one object per line), and exit code 1. Where
/// `RUST_LOG` turns the bridge's ERROR lines off, it is written raw, as
/// panics are (see `telemetry::init`): never silent.
#[tokio::main]
async fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(error) => return refuse_command_line(error),
    };
    telemetry::init(cli.log_format);
    run(cli.command).await.unwrap_or_else(|error| {
        if tracing::enabled!(tracing::Level::ERROR) {
            tracing::error!(error = %format_args!("{error:#}"), "stopped with an error");
        } else {
            eprintln!("Error: {error:#}");
        }
        ExitCode::FAILURE
    })
}

/// Ends a command line clap refuses: its help and version as clap prints
/// them, its errors (a bad flag, or a bad value in a `BRIDGE_*` variable) as
/// the log line of the log format asked for, so that a JSON log collector
/// shows why a pod does not start; clap's own text otherwise, or where
/// `RUST_LOG` turns the line off. Exit code 2, clap's.
fn refuse_command_line(error: clap::Error) -> ExitCode {
    use clap::CommandFactory;
    use clap::error::ErrorKind;
    let asked_for_output = matches!(
        error.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    );
    if asked_for_output {
        error.exit();
    }
    // The format as the rest of the command line sets it, whatever else is
    // wrong with it.
    let format = Cli::command()
        .ignore_errors(true)
        .try_get_matches()
        .ok()
        .and_then(|matches| matches.get_one::<LogFormat>("log_format").copied());
    let stray = is_stray_value(&error);
    let text = if stray {
        STRAY_VALUE.to_owned()
    } else {
        let text = error.render().to_string();
        let text = text.trim_end();
        text.strip_prefix("error: ").unwrap_or(text).to_owned()
    };
    if format == Some(LogFormat::Json) {
        telemetry::init(LogFormat::Json);
        if tracing::enabled!(tracing::Level::ERROR) {
            tracing::error!(error = text, "invalid command line");
            return ExitCode::from(2);
        }
    }
    if !stray {
        error.exit();
    }
    eprintln!("error: {text}");
    ExitCode::from(2)
}

/// What is said of a value given without its flag, in place of the value.
const STRAY_VALUE: &str = "an argument that is no flag of this command, not shown: a value \
    given without its flag may be a secret (a list's values are separated by `,`, not by \
    spaces: `--callback-keys key1,key2`); see --help";

/// Whether clap refuses a value given without its flag (`--callback-keys k1
/// k2` refuses `k2`), which it would quote: it may be a secret, and the line
/// goes to the logs. A flag it does not know (`--kafka-brokr`) is quoted.
fn is_stray_value(error: &clap::Error) -> bool {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    error.kind() == ErrorKind::UnknownArgument
        && !matches!(
            error.get(ContextKind::InvalidArg),
            Some(ContextValue::String(arg)) if arg.starts_with('-')
        )
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Serve(config) => serve(*config).await?,
        Command::Tail(args) => {
            let mut out = std::io::stdout().lock();
            until_signal(commands::tail(&args, &mut out)).await?;
        }
        Command::Check(args) => {
            let count = commands::check(&args, &mut std::io::stdout().lock())?;
            // A log line like every other command's (JSON with --log-format json).
            tracing::info!(records = count, "the records the service would publish");
        }
        Command::Schema(args) => {
            print!("{}", downstream::render(args.format, &args.flink)?);
        }
        Command::Spool(SpoolCommand::Drain(args)) => {
            let Some(drained) = until_signal(commands::spool_drain(&args)).await? else {
                anyhow::bail!(
                    "interrupted: what was not drained stays in the spool for the next drain"
                );
            };
            println!("{}", serde_json::to_string(&drained)?);
            return Ok(commands::spool_drain_exit(&drained));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs `command` until it ends (`Some`) or SIGTERM or SIGINT comes (`None`).
/// As the first process of a container, one without a handler of its own
/// would ignore SIGTERM, and `docker stop` or a Job's deletion would wait out
/// the grace period before killing it.
async fn until_signal<T>(
    command: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<Option<T>> {
    tokio::select! {
        ended = command => ended.map(Some),
        () = app::shutdown_signal() => Ok(None),
    }
}

/// Listens for SIGTERM and SIGINT from the start: reading a spool of
/// gigabytes can take minutes, and as a container's first process the bridge
/// would ignore a SIGTERM until it listened, and its pod wait out its grace
/// period. A signal before serving ends the process at once: the spool is
/// written to survive a crash, and its read, on a blocking thread, would hold
/// the runtime's own end for as long as it takes.
async fn serve(config: Config) -> anyhow::Result<()> {
    let mut shutdown = Box::pin(app::shutdown_signal());
    let app = tokio::select! {
        biased;
        () = &mut shutdown => {
            tracing::info!("stopped while starting");
            std::process::exit(0);
        }
        app = App::build(config) => app?,
    };
    app.run(shutdown).await
}
