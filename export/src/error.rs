/// Errors from reading checkpoints and exporting graphs. Each names the file
/// (and tensor) it is about.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt or truncated file: {message}")]
    Corrupt { path: String, message: String },
    #[error("{path}: the pickle refers to `{global}`, which is not allowed (only tensor rebuilding and dicts are accepted; nothing in the file is executed)")]
    ForbiddenGlobal { path: String, global: String },
    #[error("{path}: tensor `{name}` has unsupported dtype {dtype} (float32, float16 and bfloat16 are supported)")]
    UnsupportedDType {
        path: String,
        name: String,
        dtype: String,
    },
    #[error("{path}: {message}")]
    Config { path: String, message: String },
    #[error("unsupported model family `{got}` (supported: {})", .supported.join(", "))]
    UnsupportedFamily {
        got: String,
        supported: Vec<&'static str>,
    },
    #[error("output {path} already exists (pass --force to replace it)")]
    OutputExists { path: String },
    #[error(transparent)]
    Graph(#[from] flamingo_graphs::Error),
    #[error(transparent)]
    Contract(#[from] flamingo_contract::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

pub(crate) fn io_err(path: &std::path::Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.display().to_string(),
        source,
    }
}

pub(crate) fn corrupt(path: &std::path::Path, message: impl Into<String>) -> Error {
    Error::Corrupt {
        path: path.display().to_string(),
        message: message.into(),
    }
}
