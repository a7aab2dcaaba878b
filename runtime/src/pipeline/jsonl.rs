//! The `flamingo generate --batch` JSONL format, read line by line with
//! bounded lines: one request per non-blank line.

use std::io::{BufRead, Read};
use std::path::{Path, PathBuf};

use crate::search::GenerateOptions;
use crate::{Error, Request, Result};

/// One request from a JSONL line; media paths resolve against `base`.
pub fn parse_request(
    line: &str,
    base: &Path,
    defaults: &GenerateOptions,
) -> std::result::Result<Request, String> {
    Request::from_json_line(line, base, defaults)
}

/// Longest JSONL line read (a request is a prompt and some paths).
const MAX_LINE_BYTES: usize = 16 << 20;

/// The numbered non-blank lines of a JSONL file, read as they are needed:
/// each line is UTF-8 or an error naming it; the file must be a regular one
/// (a FIFO or device could block or never end).
pub struct Lines {
    path: PathBuf,
    reader: std::io::BufReader<std::fs::File>,
    line: usize,
}

impl Lines {
    pub fn open(path: &Path) -> Result<Lines> {
        let io = |source| Error::Io {
            path: path.display().to_string(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if !meta.is_file() {
            return Err(Error::Input(format!(
                "{}: not a regular file",
                path.display()
            )));
        }
        let f = std::fs::File::open(path).map_err(io)?;
        Ok(Lines {
            path: path.to_path_buf(),
            reader: std::io::BufReader::new(f),
            line: 0,
        })
    }
}

impl Iterator for Lines {
    /// (line number, its text or what is wrong with it)
    type Item = Result<(usize, std::result::Result<String, String>)>;
    fn next(&mut self) -> Option<Self::Item> {
        loop {
            let mut buf = Vec::new();
            let n = match (&mut self.reader)
                .take(MAX_LINE_BYTES as u64 + 1)
                .read_until(b'\n', &mut buf)
            {
                Ok(n) => n,
                Err(source) => {
                    return Some(Err(Error::Io {
                        path: self.path.display().to_string(),
                        source,
                    }))
                }
            };
            if n == 0 {
                return None;
            }
            self.line += 1;
            if buf.len() > MAX_LINE_BYTES {
                // the rest of an over-long line is skipped
                let _ = self.reader.read_until(b'\n', &mut Vec::new());
                return Some(Ok((
                    self.line,
                    Err(format!("longer than {MAX_LINE_BYTES} bytes")),
                )));
            }
            let text = match String::from_utf8(buf) {
                Ok(t) => t,
                Err(e) => {
                    return Some(Ok((
                        self.line,
                        Err(format!(
                            "not UTF-8 text (at byte {})",
                            e.utf8_error().valid_up_to()
                        )),
                    )))
                }
            };
            if !text.trim().is_empty() {
                return Some(Ok((self.line, Ok(text))));
            }
        }
    }
}

/// The requests of a JSONL file (blank lines skipped), at most `limit`; the
/// first bad line is an error naming the file and line.
pub fn read_requests(
    path: &Path,
    defaults: &GenerateOptions,
    limit: Option<usize>,
) -> Result<Vec<Request>> {
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let mut reqs = Vec::new();
    for item in Lines::open(path)? {
        if limit.is_some_and(|n| reqs.len() >= n) {
            break;
        }
        let (i, line) = item?;
        let r = line
            .and_then(|l| parse_request(&l, &base, defaults))
            .map_err(|e| Error::Input(format!("{}:{i}: {e}", path.display())))?;
        reqs.push(r);
    }
    Ok(reqs)
}
