//! Logging: structured JSON under Lambda (for CloudWatch), readable lines locally.
//! `RUST_LOG` filters as usual; the default is `info`. Secrets are never logged: requests are
//! logged by route, status, latency and license only.

use tracing_subscriber::EnvFilter;

pub fn init() {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let under_lambda = std::env::var_os("AWS_LAMBDA_FUNCTION_NAME").is_some();
    // Colour only for a person at a terminal: a log file or a pipe gets plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour && !under_lambda);
    let result = if under_lambda {
        builder.json().with_current_span(true).without_time().try_init()
    } else {
        builder.compact().try_init()
    };
    // A second init (tests, a binary that also embeds the runner) keeps the first subscriber.
    let _ = result;
}
