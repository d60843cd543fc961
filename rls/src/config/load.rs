use super::error::Source;
use super::validate::build;
use super::{Config, ConfigErrors};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Reads a config file, or every `*.toml` in a directory (in name order),
/// and validates them as one config.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    let files = files_of(path)?;
    let mut texts = Vec::with_capacity(files.len());
    for file in &files {
        let text = std::fs::read_to_string(file).map_err(|e| {
            ConfigErrors::whole_file(&file.display().to_string(), format!("cannot read: {e}"))
        })?;
        texts.push((file.display().to_string(), text));
    }
    let mut config = parse_many(&texts)?;
    config.sources = files;
    Ok(config)
}

/// Validates one config given as text; `name` is used in error messages.
pub fn parse_str(name: &str, text: &str) -> Result<Config, ConfigErrors> {
    parse_many(&[(name.to_string(), text.to_string())])
}

fn parse_many(texts: &[(String, String)]) -> Result<Config, ConfigErrors> {
    let sources: Vec<Source> = texts
        .iter()
        .map(|(name, text)| Source::new(name, text))
        .collect();
    let mut config = build(&sources)?;
    let mut hash = Sha256::new();
    for (name, text) in texts {
        hash.update(name.as_bytes());
        hash.update([0]);
        hash.update(text.as_bytes());
    }
    config.version = hex::encode(&hash.finalize()[..6]);
    Ok(config)
}

fn files_of(path: &Path) -> Result<Vec<PathBuf>, ConfigErrors> {
    let shown = path.display().to_string();
    let meta = std::fs::metadata(path)
        .map_err(|e| ConfigErrors::whole_file(&shown, format!("cannot read: {e}")))?;
    if !meta.is_dir() {
        return Ok(vec![path.to_path_buf()]);
    }
    let entries = std::fs::read_dir(path)
        .map_err(|e| ConfigErrors::whole_file(&shown, format!("cannot list: {e}")))?;
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        // Kubernetes ConfigMap mounts hold `..data` links and hidden
        // timestamped folders beside the visible files; skip them.
        .filter(|p| {
            p.extension().is_some_and(|x| x == "toml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ConfigErrors::whole_file(
            &shown,
            "no *.toml file in directory",
        ));
    }
    Ok(files)
}
