//! The Procfile: `TYPE: COMMAND` lines, the process types of a release made from a
//! slug (the slug runner runs the command; the release only names the types).

use std::collections::BTreeMap;

/// Process types and their commands, in name order. Blank lines and `#` comments
/// are skipped; a line that is not `TYPE: COMMAND` with a type of lowercase letters,
/// digits and dashes is an error naming the line.
pub fn parse(text: &str) -> Result<BTreeMap<String, String>, String> {
    let mut types = BTreeMap::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((ty, cmd)) = line.split_once(':') else {
            return Err(format!(
                "Procfile line {}: expected TYPE: COMMAND, got {line:?}",
                n + 1
            ));
        };
        let (ty, cmd) = (ty.trim(), cmd.trim());
        let valid = !ty.is_empty()
            && ty.len() <= 40
            && ty
                .bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
            && !ty.starts_with('-');
        if !valid {
            return Err(format!(
                "Procfile line {}: process type {ty:?}: use lowercase letters, digits and dashes",
                n + 1
            ));
        }
        if cmd.is_empty() {
            return Err(format!("Procfile line {}: {ty} has no command", n + 1));
        }
        types.insert(ty.to_string(), cmd.to_string());
    }
    Ok(types)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn types_and_commands() {
        let p =
            parse("# app\nweb: python3 app.py --port $PORT\n\nworker:  sh -c 'a: b'\n").unwrap();
        assert_eq!(p["web"], "python3 app.py --port $PORT");
        assert_eq!(p["worker"], "sh -c 'a: b'");
        assert_eq!(p.len(), 2);
    }

    #[test]
    fn bad_lines_are_named() {
        assert!(parse("web python3").unwrap_err().contains("line 1"));
        assert!(parse("\nWeb: x").unwrap_err().contains("line 2"));
        assert!(parse("web:").unwrap_err().contains("no command"));
    }
}
