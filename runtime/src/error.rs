/// Runtime errors; each says what failed and where.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: not a readable image: {message}")]
    BadImage { path: String, message: String },
    #[error(transparent)]
    Contract(#[from] flamingo_contract::Error),
    #[error(transparent)]
    Graph(#[from] flamingo_graphs::Error),
    #[error("backend {backend}: {message}")]
    Backend { backend: String, message: String },
    #[error("backend `{0}` is not available in this build (enable the `{1}` feature)")]
    BackendDisabled(String, &'static str),
    #[error("unknown backend `{0}` (known: tract, ort-cpu, ort-cuda, ort-tensorrt)")]
    UnknownBackend(String),
    #[error("{0}")]
    Input(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
