//! Job templates: presets in `templates/jobs/NAME.yaml` merged underneath a job.
//!
//! A template has the job file's shape with every key optional, minus `name` and `template`.
//! It is checked exactly like a job file, and its problems are reported against the template
//! file, so an operator who broke a shared preset sees where, not a puzzling error in every job
//! that uses it.

use crate::diag::Diagnostic;
use crate::rules::check_name;
use crate::source::Source;
use crate::text::{read_text_file, ReadFailure};
use std::io;
use std::path::{Path, PathBuf};

/// A template file's text, read and ready to parse.
#[derive(Debug)]
pub(crate) struct TemplateText {
    /// The path as shown in messages.
    pub shown: String,
    pub text: String,
}

/// The folder that holds `NAME.yaml` template files. The daemon's `templates/` folder (which
/// has `jobs/`, `notices/`, ...) and `templates/jobs` itself are both accepted, so either
/// can be configured.
pub fn job_templates_dir(dir: &Path) -> PathBuf {
    let nested = dir.join("jobs");
    if nested.is_dir() {
        nested
    } else {
        dir.to_path_buf()
    }
}

/// The template names available in `dir` (see [`job_templates_dir`]), sorted.
pub fn available_templates(dir: &Path) -> Vec<String> {
    let dir = job_templates_dir(dir);
    let mut names: Vec<String> = match std::fs::read_dir(&dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let name = entry.file_name().into_string().ok()?;
                let stem = name.strip_suffix(".yaml")?;
                check_name(stem).ok().map(|()| stem.to_string())
            })
            .collect(),
        Err(err) => {
            tracing::debug!(dir = %dir.display(), error = %err, "cannot list job templates");
            Vec::new()
        }
    };
    names.sort();
    names
}

/// Finds and reads template `name`, which the job `job` asked for. Problems are reported at
/// the job's `template:` value, except those inside the template file itself.
pub(crate) fn read_template(
    name: &str,
    templates_dir: Option<&Path>,
    job: &Source,
) -> Result<TemplateText, Diagnostic> {
    let at_name = |message: String, hint: String| job.at_value(&["template"], message, Some(hint));
    if let Err(why) = check_name(name) {
        return Err(at_name(
            format!("template name `{name}` {why}"),
            "a template is a file name from templates/jobs without `.yaml`, e.g. lowmem-24g"
                .to_string(),
        ));
    }
    let Some(dir) = templates_dir else {
        return Err(at_name(
            format!("the job asks for template `{name}`, but no templates folder is configured"),
            "remove `template:` or set templates_dir in the daemon config".to_string(),
        ));
    };
    let dir = job_templates_dir(dir);
    let path = dir.join(format!("{name}.yaml"));
    let shown = path.display().to_string();
    match read_text_file(&path, &shown) {
        Ok(text) => Ok(TemplateText { shown, text }),
        Err(ReadFailure::Io(err)) if err.kind() == io::ErrorKind::NotFound => {
            let available = available_templates(&dir);
            let hint = if available.is_empty() {
                format!("there are no templates in {}", dir.display())
            } else {
                let names: Vec<&str> = available.iter().map(String::as_str).collect();
                match crate::rules::closest(name, &names) {
                    Some(best) => format!(
                        "did you mean `{best}`? available templates: {}",
                        names.join(", ")
                    ),
                    None => format!("available templates: {}", names.join(", ")),
                }
            };
            Err(at_name(format!("unknown template `{name}`"), hint))
        }
        Err(ReadFailure::Io(err)) => Err(at_name(
            format!("template `{name}` cannot be read from {shown}: {err}"),
            "the daemon's user needs read access to the templates folder".to_string(),
        )),
        Err(ReadFailure::Content(diagnostic)) => Err(diagnostic),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists_yaml_files_by_name() {
        let dir = tempfile::tempdir().expect("temp dir");
        for file in ["b.yaml", "a.yaml", "notes.txt", ".hidden.yaml"] {
            std::fs::write(dir.path().join(file), "render: {}\n").expect("write");
        }
        assert_eq!(available_templates(dir.path()), vec!["a", "b"]);
    }

    #[test]
    fn accepts_top_level_templates_folder() {
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::create_dir(dir.path().join("jobs")).expect("mkdir");
        std::fs::write(dir.path().join("jobs/x.yaml"), "render: {}\n").expect("write");
        assert_eq!(available_templates(dir.path()), vec!["x"]);
    }

    #[test]
    fn template_name_cannot_climb_out() {
        let dir = tempfile::tempdir().expect("temp dir");
        let job = Source {
            name: "j.yaml",
            text: "template: ../secret\n",
        };
        let d = read_template("../secret", Some(dir.path()), &job).expect_err("traversal");
        assert_eq!((d.line, d.column), (1, 11));
    }
}
