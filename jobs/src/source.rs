//! A YAML text together with the name it is shown under, so every check can point into it.

use crate::diag::{locate_key, locate_value, Diagnostic};

/// One file being checked: the job file or its template.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Source<'a> {
    pub name: &'a str,
    pub text: &'a str,
}

impl Source<'_> {
    /// A problem with the value of `key_path`; the caret goes under the value. Falls back to
    /// the key, then to the nearest enclosing key that exists, then to line 1.
    pub fn at_value(&self, key_path: &[&str], message: String, hint: Option<String>) -> Diagnostic {
        let position = locate_value(self.text, key_path).or_else(|| self.nearest_key(key_path));
        self.at(position, message, hint)
    }

    /// A problem with the key `key_path` itself (or with something missing under it).
    pub fn at_key(&self, key_path: &[&str], message: String, hint: Option<String>) -> Diagnostic {
        let position = self.nearest_key(key_path);
        self.at(position, message, hint)
    }

    /// A problem at a known position (or line 1 when there is none).
    pub fn at(
        &self,
        position: Option<(usize, usize)>,
        message: String,
        hint: Option<String>,
    ) -> Diagnostic {
        let (line, column) = position.unwrap_or((1, 1));
        Diagnostic::at(self.name, self.text, line, column, message, hint)
    }

    fn nearest_key(&self, key_path: &[&str]) -> Option<(usize, usize)> {
        (1..=key_path.len())
            .rev()
            .find_map(|len| locate_key(self.text, &key_path[..len]))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_key_points_at_its_section() {
        let src = Source {
            name: "j.yaml",
            text: "name: a\ninputs:\n  image: /x\n",
        };
        let d = src.at_key(&["inputs", "audio"], "missing".into(), None);
        assert_eq!((d.line, d.column), (2, 1));
    }

    #[test]
    fn absent_section_falls_back_to_line_one() {
        let src = Source {
            name: "j.yaml",
            text: "name: a\n",
        };
        let d = src.at_value(&["output", "path"], "missing".into(), None);
        assert_eq!((d.line, d.column), (1, 1));
    }
}
