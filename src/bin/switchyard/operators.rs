//! `switchyard user add|remove|list` (the users file of `[admin]
//! users_file`) and `switchyard audit verify` (the audit trail's chain).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::Subcommand;

use switchyard::switch::admin::audit::{self, TrailVerdict, Verdict};
use switchyard::switch::admin::totp;
use switchyard::switch::admin::users::{self, Role, UserEntry};

/// Where `user` looks without `--users-file` (relative to the current
/// directory, as the config's paths are).
const DEFAULT_USERS_FILE: &str = "config/users.toml";
const DEFAULT_AUDIT_FILE: &str = "data/audit.jsonl";

#[derive(Subcommand)]
pub enum UserCommand {
    /// Add an operator: reads the password twice (from the terminal, or
    /// two lines of stdin when it is not one), makes a fresh TOTP secret
    /// and prints its otpauth:// URI once, for an authenticator app.
    Add {
        name: String,
        /// viewer (reads the API) or operator (also calls actions).
        #[arg(long, value_parser = Role::parse)]
        role: Role,
        #[arg(long, default_value = DEFAULT_USERS_FILE)]
        users_file: PathBuf,
    },
    /// Remove an operator.
    Remove {
        name: String,
        #[arg(long, default_value = DEFAULT_USERS_FILE)]
        users_file: PathBuf,
    },
    /// List the operators and their roles (no hash, no secret).
    List {
        #[arg(long, default_value = DEFAULT_USERS_FILE)]
        users_file: PathBuf,
    },
}

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Check the audit trail's hash chain; names the first broken line
    /// (exit status 1), or prints the line count and the last line's
    /// SHA-256. A FILE alone, or a directory: each trail in it (the live
    /// `<stem>.jsonl` and its dated files) as one chain across its files.
    Verify {
        #[arg(default_value = DEFAULT_AUDIT_FILE)]
        file: PathBuf,
    },
}

/// The entries of an existing file, or none for a file not there yet.
fn entries_or_empty(path: &Path) -> Result<Vec<UserEntry>, String> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    users::read_entries(path)
}

pub fn run_user(cmd: UserCommand) -> ExitCode {
    let result = match cmd {
        UserCommand::Add {
            name,
            role,
            users_file,
        } => add(&name, role, &users_file),
        UserCommand::Remove { name, users_file } => remove(&name, &users_file),
        UserCommand::List { users_file } => list(&users_file),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("switchyard user: {e}");
            ExitCode::from(1)
        }
    }
}

fn read_password() -> Result<zeroize::Zeroizing<String>, String> {
    use zeroize::Zeroizing;
    let (first, second) = if std::io::stdin().is_terminal() {
        let a =
            Zeroizing::new(rpassword::prompt_password("Password: ").map_err(|e| e.to_string())?);
        let b = Zeroizing::new(rpassword::prompt_password("Again: ").map_err(|e| e.to_string())?);
        (a, b)
    } else {
        let mut lines = std::io::stdin().lock();
        let mut line = || -> Result<Zeroizing<String>, String> {
            let mut s = Zeroizing::new(String::new());
            lines.read_line(&mut s).map_err(|e| e.to_string())?;
            let trimmed = Zeroizing::new(s.trim_end_matches(['\n', '\r']).to_owned());
            Ok(trimmed)
        };
        (line()?, line()?)
    };
    if *first != *second {
        return Err("the two passwords differ".into());
    }
    let n = first.chars().count();
    if n < users::MIN_PASSWORD {
        return Err(format!(
            "a password has at least {} characters (PCI DSS 8.3.6); this one has {n}",
            users::MIN_PASSWORD
        ));
    }
    if first.len() > users::MAX_PASSWORD {
        return Err(format!(
            "a password has at most {} bytes",
            users::MAX_PASSWORD
        ));
    }
    Ok(first)
}

fn add(name: &str, role: Role, path: &Path) -> Result<(), String> {
    users::check_name(name)?;
    let mut entries = entries_or_empty(path)?;
    if entries.iter().any(|e| e.name == name) {
        return Err(format!(
            "{}: `{name}` is already an operator (`user remove {name}` first)",
            path.display()
        ));
    }
    if entries.len() >= users::MAX_USERS {
        return Err(format!(
            "{}: already {} operators",
            path.display(),
            users::MAX_USERS
        ));
    }
    let password = read_password()?;
    let password_hash = users::hash_password(&password)?;
    drop(password);
    let secret = zeroize::Zeroizing::new(users::new_totp_secret()?);
    entries.push(UserEntry {
        name: name.to_owned(),
        role,
        password_hash,
        totp_secret: totp::encode_secret(&secret),
    });
    users::write_entries(path, &entries)?;
    eprintln!(
        "{}: added {name} ({role}). Scan this URI into the authenticator app now; it is not \
         shown again:",
        path.display()
    );
    println!("{}", totp::provisioning_uri("Switchyard", name, &secret));
    eprintln!("A running switch reads the file at start, or at POST /api/actions/reload.");
    Ok(())
}

fn remove(name: &str, path: &Path) -> Result<(), String> {
    let mut entries = users::read_entries(path)?;
    let before = entries.len();
    entries.retain(|e| e.name != name);
    if entries.len() == before {
        return Err(format!("{}: no operator `{name}`", path.display()));
    }
    users::write_entries(path, &entries)?;
    eprintln!(
        "{}: removed {name}; a running switch ends their sessions at POST /api/actions/reload \
         (or its next start)",
        path.display()
    );
    Ok(())
}

fn list(path: &Path) -> Result<(), String> {
    let entries = users::read_entries(path)?;
    let mut out = std::io::stdout().lock();
    for e in &entries {
        let _ = writeln!(out, "{}\t{}", e.name, e.role);
    }
    if entries.is_empty() {
        eprintln!("{}: no operator", path.display());
    }
    Ok(())
}

pub fn run_audit(cmd: AuditCommand) -> ExitCode {
    let AuditCommand::Verify { file } = cmd;
    if file.is_dir() {
        return verify_dir(&file);
    }
    let f = match std::fs::File::open(&file) {
        Ok(f) => f,
        Err(e) => {
            eprintln!("switchyard audit verify: {}: {e}", file.display());
            return ExitCode::from(2);
        }
    };
    match audit::verify(std::io::BufReader::new(f)) {
        Ok(Verdict::Intact {
            lines,
            last_hash,
            torn_tail,
            after_file,
        }) => {
            warn_torn(&file, torn_tail);
            let after = match after_file {
                Some(before) => format!(
                    " from its first line, a rotation after {before} (not checked: `audit \
                     verify` on the directory checks across files)"
                ),
                None => String::new(),
            };
            println!(
                "{}: OK: {lines} line(s), the chain holds{after}; the last line's SHA-256 is \
                 {last_hash} (compare it with a copy kept elsewhere: a chain cannot show lines \
                 cut off its end)",
                file.display()
            );
            ExitCode::SUCCESS
        }
        Ok(Verdict::Broken { line, message }) => {
            println!("{}: BROKEN at line {line}: {message}", file.display());
            ExitCode::from(1)
        }
        Err(e) => {
            eprintln!("switchyard audit verify: {}: {e}", file.display());
            ExitCode::from(2)
        }
    }
}

fn warn_torn(file: &Path, torn_tail: Option<usize>) {
    if let Some(n) = torn_tail {
        eprintln!(
            "{}: warning: {n} byte(s) after the last line end: a line being written, or \
             torn by a crash (the switch cuts it off at its next start and records that)",
            file.display()
        );
    }
}

/// Every trail in `dir`, each as one chain; exit 1 if any is broken.
fn verify_dir(dir: &Path) -> ExitCode {
    let trails = match audit::trails_in(dir) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("switchyard audit verify: {}: {e}", dir.display());
            return ExitCode::from(2);
        }
    };
    if trails.is_empty() {
        eprintln!(
            "switchyard audit verify: {}: no audit trail here (no *.jsonl file)",
            dir.display()
        );
        return ExitCode::from(2);
    }
    let mut status = ExitCode::SUCCESS;
    for files in trails {
        let live = files.last().cloned().unwrap_or_default();
        match audit::verify_trail(&files) {
            Ok(TrailVerdict::Intact {
                files,
                last_hash,
                torn_tail,
                after_deleted,
            }) => {
                warn_torn(&live, torn_tail);
                let lines: u64 = files.iter().map(|(_, n)| n).sum();
                let after = match after_deleted {
                    Some(gone) => format!(", from after {gone} (deleted by retention)"),
                    None => String::new(),
                };
                println!(
                    "{}: OK: {} file(s), {lines} line(s), the chain holds across them{after}; \
                     the last line's SHA-256 is {last_hash}",
                    live.display(),
                    files.len()
                );
            }
            Ok(TrailVerdict::Broken {
                file,
                line,
                message,
            }) => {
                println!("{}: BROKEN at line {line}: {message}", file.display());
                status = ExitCode::from(1);
            }
            Err(e) => {
                eprintln!("switchyard audit verify: {}: {e}", live.display());
                return ExitCode::from(2);
            }
        }
    }
    status
}
