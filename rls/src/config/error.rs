use std::fmt;

/// One problem in a config file, located to the line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}:{line}: {field}: {message}")]
pub struct ConfigError {
    pub file: String,
    pub line: usize,
    pub field: String,
    pub message: String,
}

impl ConfigError {
    /// An error at a `file:line` location string (as rules and quotas keep
    /// their source), for checks that span several entries.
    pub(crate) fn at(source: &str, field: &str, message: String) -> ConfigError {
        let (file, line) = source.rsplit_once(':').unwrap_or((source, "0"));
        ConfigError {
            file: file.to_string(),
            line: line.parse().unwrap_or(0),
            field: field.to_string(),
            message,
        }
    }
}

/// Every problem found, so an operator fixes a file in one pass.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl ConfigErrors {
    /// A single error not tied to a line (an unreadable file, say).
    pub fn whole_file(file: &str, message: impl Into<String>) -> ConfigErrors {
        ConfigErrors(vec![ConfigError {
            file: file.to_string(),
            line: 0,
            field: "-".into(),
            message: message.into(),
        }])
    }
}

/// Maps byte offsets of one file to 1-based line numbers.
pub(crate) struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
    /// Byte offset of each line's start: a lookup is a binary search, so
    /// locating every rule of a 10,000-rule file stays linear overall.
    line_starts: Vec<usize>,
    /// The number of lines (as `str::lines` counts them), at least 1.
    last_line: usize,
}

impl<'a> Source<'a> {
    pub fn new(name: &'a str, text: &'a str) -> Source<'a> {
        let line_starts = std::iter::once(0)
            .chain(text.match_indices('\n').map(|(i, _)| i + 1))
            .collect();
        Source {
            name,
            text,
            line_starts,
            last_line: text.lines().count().max(1),
        }
    }

    /// The line of a byte offset; an offset at the very end (after a last
    /// newline) belongs to the last line, so every line named is one the
    /// file has.
    pub fn line_of(&self, offset: usize) -> usize {
        let line = match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        };
        line.clamp(1, self.last_line)
    }

    pub fn error(
        &self,
        offset: usize,
        field: impl Into<String>,
        message: impl Into<String>,
    ) -> ConfigError {
        ConfigError {
            file: self.name.to_string(),
            line: self.line_of(offset),
            field: field.into(),
            message: message.into(),
        }
    }

    /// Turns a TOML syntax or type error into a located error. toml names
    /// no field path, so the field is read off the source: the key on the
    /// failing line, under the nearest table header.
    pub fn toml_error(&self, err: &toml::de::Error) -> ConfigError {
        let offset = err.span().map(|s| s.start).unwrap_or(0);
        let line = self.line_of(offset);
        let lines: Vec<&str> = self.text.lines().collect();
        let key = lines
            .get(line.saturating_sub(1))
            .and_then(|l| l.split_once('='))
            .map(|(k, _)| k.trim().trim_matches('"').to_string())
            .filter(|k| !k.is_empty() && !k.starts_with('['));
        let table = lines[..line.saturating_sub(1).min(lines.len())]
            .iter()
            .rev()
            .find_map(|l| {
                let l = l.trim();
                l.starts_with('[')
                    .then(|| l.trim_matches(|c| c == '[' || c == ']').trim().to_string())
            })
            // A header still being written (`[`) names no table.
            .filter(|t| !t.is_empty());
        let field = match (table, key) {
            (Some(t), Some(k)) => format!("{t}.{k}"),
            (Some(t), None) => t,
            (None, Some(k)) => k,
            (None, None) => "-".into(),
        };
        ConfigError {
            file: self.name.to_string(),
            line,
            field,
            message: err.message().trim().replace('\n', " "),
        }
    }
}
