use super::error::Source;
use super::peer::PeerEnv;
use super::validate::{build, is_yaml};
use super::{Config, ConfigErrors};
use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};

/// Reads a config file, or every `*.toml` and envoyproxy/ratelimit `*.yaml`
/// in a directory (in name order), plus the YAML files `[envoy_ratelimit]
/// yaml` names, and validates them as one config, with the peer's settings
/// from this process's environment.
pub fn load(path: &Path) -> Result<Config, ConfigErrors> {
    load_with(path, &PeerEnv::from_process())
}

/// [`load`] with the given environment.
pub fn load_with(path: &Path, env: &PeerEnv) -> Result<Config, ConfigErrors> {
    let mut files = files_of(path)?;
    let mut texts = Vec::with_capacity(files.len());
    let mut i = 0;
    while i < files.len() {
        let file = files[i].clone();
        let text = std::fs::read_to_string(&file).map_err(|e| {
            ConfigErrors::whole_file(&file.display().to_string(), format!("cannot read: {e}"))
        })?;
        if !is_yaml(&file.display().to_string()) {
            for named in yaml_named_in(&file, &text)? {
                if !files.contains(&named) {
                    files.push(named);
                }
            }
        }
        texts.push((file.display().to_string(), text));
        i += 1;
    }
    let mut config = parse_many(&texts, env)?;
    config.sources = files;
    Ok(config)
}

/// The YAML files a TOML file names in `[envoy_ratelimit] yaml`, resolved
/// against its directory (a directory stands for its `*.yaml`). A file that
/// does not parse names none here: validation reports why.
fn yaml_named_in(file: &Path, text: &str) -> Result<Vec<PathBuf>, ConfigErrors> {
    let Ok(table) = text.parse::<toml::Table>() else {
        return Ok(vec![]);
    };
    let Some(list) = table
        .get("envoy_ratelimit")
        .and_then(|p| p.get("yaml"))
        .and_then(|y| y.as_array())
    else {
        return Ok(vec![]);
    };
    let base = file.parent().unwrap_or(Path::new("."));
    let mut out = Vec::new();
    for p in list.iter().filter_map(|v| v.as_str()) {
        let path = base.join(p);
        if path.is_dir() {
            out.extend(
                files_of(&path)?
                    .into_iter()
                    .filter(|f| is_yaml(&f.display().to_string())),
            );
        } else {
            out.push(path);
        }
    }
    Ok(out)
}

/// Validates one config given as text; `name` is used in error messages
/// (a name ending in `.yaml` is read as envoyproxy/ratelimit YAML). No
/// environment is read.
pub fn parse_str(name: &str, text: &str) -> Result<Config, ConfigErrors> {
    parse_many(&[(name.to_string(), text.to_string())], &PeerEnv::default())
}

/// Several files given as (name, text), validated as one config with the
/// given environment.
pub fn parse_files(texts: &[(String, String)], env: &PeerEnv) -> Result<Config, ConfigErrors> {
    parse_many(texts, env)
}

fn parse_many(texts: &[(String, String)], env: &PeerEnv) -> Result<Config, ConfigErrors> {
    let sources: Vec<Source> = texts
        .iter()
        .map(|(name, text)| Source::new(name, text))
        .collect();
    let mut config = build(&sources, env)?;
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
            p.extension()
                .is_some_and(|x| x == "toml" || x == "yaml" || x == "yml")
                && !p
                    .file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with('.'))
        })
        .collect();
    files.sort();
    if files.is_empty() {
        return Err(ConfigErrors::whole_file(
            &shown,
            "no *.toml or *.yaml file in directory",
        ));
    }
    Ok(files)
}
