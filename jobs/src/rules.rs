//! Small, pure rules for text values: names, mail addresses, webhook URLs, environment
//! variable names, and the "did you mean" suggestion. Each returns why a value fails, in
//! words that can go straight into a diagnostic.

/// Longest job, template or profile name. Names become directory and file names.
pub(crate) const MAX_NAME_CHARS: usize = 100;

/// A job, template or profile name: 1–100 of `[A-Za-z0-9._-]`, not starting with `.` (so it
/// is never hidden, never `..`, and safe as a file name).
pub(crate) fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err("is empty".to_string());
    }
    if name.chars().count() > MAX_NAME_CHARS {
        return Err(format!(
            "is {} characters long, more than {MAX_NAME_CHARS}",
            name.chars().count()
        ));
    }
    if name.starts_with('.') {
        return Err("starts with `.`".to_string());
    }
    if let Some(bad) = name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!("contains `{}`", bad.escape_debug()));
    }
    Ok(())
}

/// A plain `local@domain` address, as our mailer will accept it: ASCII only, no display name,
/// no comments, no quoted local part. Strict on purpose: a typo is better caught at intake
/// than when the job finishes hours later.
pub(crate) fn is_mail_address(address: &str) -> bool {
    const LOCAL_SPECIALS: &str = "!#$%&'*+/=?^_`{|}~-.";
    if address.len() > 254 {
        return false;
    }
    let Some((local, domain)) = address.rsplit_once('@') else {
        return false;
    };
    let local_ok = (1..=64).contains(&local.len())
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || LOCAL_SPECIALS.contains(c))
        && !local.starts_with('.')
        && !local.ends_with('.')
        && !local.contains("..");
    local_ok && is_host_name(domain)
}

/// A DNS host name: dot-separated labels of letters, digits and inner hyphens.
fn is_host_name(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 253
        && host.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        })
}

/// An `http://` or `https://` URL with a host. Credentials in the URL are refused: the job
/// file is copied into the state directory and shown by `reelspool status`, so secrets belong
/// in `secret_env`.
pub(crate) fn check_webhook_url(url: &str) -> Result<(), String> {
    if let Some(bad) = url.chars().find(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!("contains `{}`", bad.escape_debug()));
    }
    let rest = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
        .ok_or_else(|| "must start with http:// or https://".to_string())?;
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.contains('@') {
        return Err("carries a user name or password".to_string());
    }
    let (host, port) = if let Some(bracketed) = authority.strip_prefix('[') {
        let (inside, after) = bracketed
            .split_once(']')
            .ok_or_else(|| "has an unclosed `[` in its host".to_string())?;
        if inside.is_empty()
            || !inside
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err("has an invalid IPv6 host".to_string());
        }
        let port = match after {
            "" => None,
            other => Some(
                other
                    .strip_prefix(':')
                    .ok_or_else(|| "has text after its host".to_string())?,
            ),
        };
        (None, port)
    } else {
        match authority.split_once(':') {
            Some((host, port)) => (Some(host), Some(port)),
            None => (Some(authority), None),
        }
    };
    if let Some(host) = host {
        if host.is_empty() {
            return Err("has no host".to_string());
        }
        if !is_host_name(host) {
            return Err(format!("has an invalid host `{host}`"));
        }
    }
    if let Some(port) = port {
        if port.is_empty()
            || !port.bytes().all(|b| b.is_ascii_digit())
            || port.parse::<u16>().is_err()
        {
            return Err(format!("has an invalid port `{port}`"));
        }
    }
    Ok(())
}

/// A portable environment variable name.
pub(crate) fn is_env_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
        && name.len() <= 128
}

/// The candidate closest to `word` by edit distance, if it is close enough to be a likely
/// typo (at most a third of the word's length, and at least 1).
pub(crate) fn closest<'a>(word: &str, candidates: &[&'a str]) -> Option<&'a str> {
    let limit = (word.chars().count() / 3).max(1);
    candidates
        .iter()
        .map(|c| (edit_distance(word, c), *c))
        .filter(|(distance, _)| *distance <= limit)
        .min_by_key(|(distance, _)| *distance)
        .map(|(_, c)| c)
}

/// Levenshtein distance over characters, with one row of memory.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = if ca == *cb {
                diagonal
            } else {
                1 + diagonal.min(above).min(row[j])
            };
            diagonal = above;
        }
    }
    row[b.len()]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_file_name_rules() {
        assert_eq!(check_name("interview-042.v2_final"), Ok(()));
        assert!(check_name("").is_err());
        assert!(check_name(".hidden").is_err());
        assert!(check_name("a/b").is_err());
        assert!(check_name("with space").is_err());
        assert!(check_name(&"a".repeat(101)).is_err());
        assert_eq!(check_name(&"a".repeat(100)), Ok(()));
    }

    #[test]
    fn mail_addresses_need_local_and_domain() {
        for good in [
            "ops@example.com",
            "a.b+tag@sub.example.org",
            "root@localhost",
        ] {
            assert!(is_mail_address(good), "{good}");
        }
        for bad in [
            "ops",
            "@example.com",
            "ops@",
            "a..b@example.com",
            "Ops <ops@example.com>",
            "ops@exa mple.com",
            "ops@-example.com",
            "ops@example..com",
        ] {
            assert!(!is_mail_address(bad), "{bad}");
        }
    }

    #[test]
    fn webhook_urls_need_http_scheme_and_host() {
        for good in [
            "https://hooks.example.com/render",
            "http://127.0.0.1:8080/x?y=1",
            "http://[::1]:9000/",
            "https://example.com",
        ] {
            assert_eq!(check_webhook_url(good), Ok(()), "{good}");
        }
        for bad in [
            "ftp://example.com/",
            "https://",
            "https:///path",
            "https://user:pw@example.com/",
            "https://example.com:99999/",
            "https://exa mple.com/",
            "example.com/hook",
        ] {
            assert!(check_webhook_url(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_names_are_portable() {
        assert!(is_env_name("HOOK_SECRET"));
        assert!(is_env_name("_X1"));
        assert!(!is_env_name("1X"));
        assert!(!is_env_name("A-B"));
        assert!(!is_env_name(""));
    }

    #[test]
    fn suggests_the_nearest_key() {
        let keys = ["size", "infer_frames", "sample_steps"];
        assert_eq!(closest("infer_frame", &keys), Some("infer_frames"));
        assert_eq!(closest("sise", &keys), Some("size"));
        assert_eq!(closest("colour", &keys), None);
    }
}
