use std::fmt;

/// Errors raised while building or writing a graph.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("missing tensor `{name}`{}", in_file(.file))]
    MissingTensor { name: String, file: Option<String> },
    #[error("tensor `{name}` has shape {} but {} was expected", Shape(.got), Shape(.expected))]
    ShapeMismatch {
        name: String,
        expected: Vec<usize>,
        got: Vec<usize>,
    },
    #[error("tensor `{name}` has dtype {got} but {expected} was expected")]
    DTypeMismatch {
        name: String,
        expected: String,
        got: String,
    },
    #[error("reading tensor `{name}`: {message}")]
    Load { name: String, message: String },
    #[error("graph `{graph}`: {message}")]
    Graph { graph: String, message: String },
    #[error("config: {0}")]
    Config(String),
    #[error("writing {path}: {source}")]
    Io {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: corrupt or truncated file: {message}")]
    Corrupt { path: String, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

fn in_file(file: &Option<String>) -> String {
    match file {
        Some(f) => format!(" in {f}"),
        None => String::new(),
    }
}

/// Formats a shape as `[a, b, c]`.
pub(crate) struct Shape<'a>(pub &'a [usize]);

impl fmt::Display for Shape<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[")?;
        for (i, d) in self.0.iter().enumerate() {
            if i > 0 {
                write!(f, ", ")?;
            }
            write!(f, "{d}")?;
        }
        write!(f, "]")
    }
}
