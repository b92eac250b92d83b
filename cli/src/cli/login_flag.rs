//! Where `--user` may stand on the command line.
//!
//! `--user NAME` logs in, and belongs before the command; but `token create` and `acl add`
//! take a `--user` of their own (whom the token or the rule is for), so the login flag
//! cannot be one clap propagates to every command. So that `herald topic list --user
//! admin` works as `herald --user admin topic list` does, a login `--user` written after
//! any other command is moved in front of it before clap reads the line.

use std::ffi::OsString;

/// The top-level flags that take a value (their values are not commands).
const VALUED: &[&str] = &[
    "--broker",
    "--tls-ca",
    "--tls-cert",
    "--tls-key",
    "--user",
    "--token",
];

/// The commands whose own `--user` names someone else.
const OWN_USER: &[(&str, &str)] = &[("token", "create"), ("acl", "add")];

/// `args` (the program's name first) with a login `--user` after the command moved in
/// front of it.
pub fn hoist(args: Vec<OsString>) -> Vec<OsString> {
    let text: Vec<Option<&str>> = args.iter().map(|a| a.to_str()).collect();
    // The command: the first word after the program that is neither a flag nor a value.
    let mut at = 1;
    while let Some(Some(word)) = text.get(at) {
        if VALUED.contains(word) {
            at += 2;
        } else if word.starts_with('-') {
            at += 1;
        } else {
            break;
        }
    }
    if at >= args.len() {
        return args;
    }
    let command = text[at];
    let sub = text.get(at + 1).copied().flatten();
    if OWN_USER
        .iter()
        .any(|&(c, s)| command == Some(c) && sub == Some(s))
    {
        return args;
    }
    let (mut front, mut rest): (Vec<OsString>, Vec<OsString>) = (Vec::new(), Vec::new());
    let mut i = at;
    while i < args.len() {
        match text[i] {
            Some("--") => {
                rest.extend(args[i..].iter().cloned());
                break;
            }
            Some("--user") if i + 1 < args.len() => {
                front.extend(args[i..i + 2].iter().cloned());
                i += 2;
                continue;
            }
            Some(word) if word.starts_with("--user=") => front.push(args[i].clone()),
            _ => rest.push(args[i].clone()),
        }
        i += 1;
    }
    let mut out: Vec<OsString> = args[..at].to_vec();
    out.extend(front);
    out.extend(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hoisted(line: &str) -> String {
        let args = line.split(' ').map(OsString::from).collect();
        let out: Vec<String> = hoist(args)
            .into_iter()
            .map(|a| a.into_string().unwrap())
            .collect();
        out.join(" ")
    }

    #[test]
    fn a_login_user_after_the_command_moves_in_front_of_it() {
        assert_eq!(
            hoisted("herald topic list --user admin"),
            "herald --user admin topic list"
        );
        assert_eq!(
            hoisted("herald --broker h:1 user add bob --admin --user=admin"),
            "herald --broker h:1 --user=admin user add bob --admin"
        );
        assert_eq!(
            hoisted("herald --broker user publish t --user admin -- --user x"),
            "herald --broker user --user admin publish t -- --user x"
        );
    }

    #[test]
    fn commands_with_their_own_user_and_lines_without_one_stay_as_they_are() {
        for line in [
            "herald token create --user alice --ttl 1h",
            "herald --user admin acl add --user alice --topic t --allow publish",
            "herald --user admin topic list",
            "herald topic list",
            "herald --user",
            "herald",
        ] {
            assert_eq!(hoisted(line), line);
        }
    }
}
