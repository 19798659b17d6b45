//! `switchyard keys`: form the LMK, generate, import, list and export
//! keys. Every command prints names, types and KCVs, never a clear key:
//! components are read from files or typed (not echoed), and an exported
//! key leaves only wrapped under a ZMK or TMK.
//!
//! Where things are: `--store PATH` or `SWITCHYARD_KEY_STORE`; the LMK
//! file `--lmk-file PATH` or `SWITCHYARD_LMK_FILE` (a path; see
//! [`super::lmk`]).

use std::io::{BufRead, IsTerminal, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, Subcommand};
use zeroize::Zeroize;

use super::cipher::Tdes;
use super::kcv::Kcv;
use super::keyblock;
use super::keys::{Algorithm, SecretKey};
use super::lmk::Lmk;
use super::random;
use super::store::{KeyStore, KeyType, StoreError, header_for};

pub const STORE_ENV: &str = "SWITCHYARD_KEY_STORE";

#[derive(Args, Debug)]
pub struct StoreArgs {
    /// The key store file [default: $SWITCHYARD_KEY_STORE].
    #[arg(long)]
    store: Option<PathBuf>,
    /// The LMK file [default: $SWITCHYARD_LMK_FILE, a path].
    #[arg(long)]
    lmk_file: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct KeySpec {
    /// The key's name in the store (A-Z a-z 0-9 . _ -).
    #[arg(long)]
    name: String,
    #[arg(long = "type", value_enum)]
    key_type: KeyType,
    /// TDES (the default) or AES.
    #[arg(long, value_enum, default_value_t = Algorithm::Tdes)]
    algorithm: Algorithm,
    /// Key length in bits: 128 (default) or 192 for TDES; 128, 192 or 256
    /// for AES.
    #[arg(long, default_value_t = 128)]
    bits: usize,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Form the LMK from two or more components, XORed, and write it to a
    /// new file (mode 0600). Components come from --component-file (one
    /// per custodian) or, typed without echo, from the terminal.
    FormLmk {
        /// Where the LMK goes (never overwritten).
        #[arg(long)]
        out: PathBuf,
        /// A file holding one component (64 hex digits); repeat it.
        #[arg(long = "component-file")]
        component_files: Vec<PathBuf>,
        /// How many components to read from stdin when no file is given.
        #[arg(long, default_value_t = 2)]
        components: usize,
        /// Also create an empty key store here under the new LMK.
        #[arg(long)]
        store: Option<PathBuf>,
    },
    /// Generate a random key into the store (created if missing).
    Generate {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        key: KeySpec,
    },
    /// Import a key: as components (files or typed), or wrapped under a ZMK
    /// or TMK already in the store.
    Import {
        #[command(flatten)]
        store: StoreArgs,
        #[command(flatten)]
        key: KeySpec,
        /// A file holding one component in hex; repeat it.
        #[arg(long = "component-file")]
        component_files: Vec<PathBuf>,
        /// Components to read from stdin when no file is given.
        #[arg(long, default_value_t = 2)]
        components: usize,
        /// The name of the ZMK or TMK the key arrives under.
        #[arg(long)]
        under: Option<String>,
        /// With --under an AES key: the key as a TR-31 version D key block.
        #[arg(long)]
        key_block: Option<String>,
        /// With --under a TDES key: the key encrypted under it (TDES ECB, hex).
        #[arg(long)]
        cryptogram: Option<String>,
        /// The KCV the key must have (required with --cryptogram, which
        /// carries no integrity check of its own).
        #[arg(long)]
        kcv: Option<String>,
    },
    /// List the keys: names, types, usage, algorithm, KCVs.
    List {
        #[command(flatten)]
        store: StoreArgs,
    },
    /// Print a key wrapped under a ZMK or TMK from the store.
    Export {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        name: String,
        /// The ZMK's (or TMK's) name.
        #[arg(long)]
        under: String,
    },
}

/// What a command failed on; printed as one line.
struct Failure(String);

impl<E: std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Failure {
        Failure(e.to_string())
    }
}

pub fn run(cmd: KeysCommand) -> ExitCode {
    let result = match cmd {
        KeysCommand::FormLmk {
            out,
            component_files,
            components,
            store,
        } => form_lmk(&out, &component_files, components, store.as_deref()),
        KeysCommand::Generate { store, key } => generate(&store, &key),
        KeysCommand::Import {
            store,
            key,
            component_files,
            components,
            under,
            key_block,
            cryptogram,
            kcv,
        } => import(
            &store,
            &key,
            &component_files,
            components,
            under.as_deref(),
            key_block.as_deref(),
            cryptogram.as_deref(),
            kcv.as_deref(),
        ),
        KeysCommand::List { store } => list(&store),
        KeysCommand::Export { store, name, under } => export(&store, &name, &under),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(e)) => {
            eprintln!("switchyard keys: {e}");
            ExitCode::from(1)
        }
    }
}

/// Reads component texts: one per file, or `count` lines from stdin
/// (prompted, and not echoed, when stdin is a terminal).
fn read_components(files: &[PathBuf], count: usize) -> Result<Vec<String>, Failure> {
    if !files.is_empty() {
        return files
            .iter()
            .map(|f| {
                std::fs::read_to_string(f)
                    .map(|mut t| {
                        let component = t.trim().to_owned();
                        t.zeroize();
                        component
                    })
                    .map_err(|e| Failure(format!("{}: {e}", f.display())))
            })
            .collect();
    }
    let stdin = std::io::stdin();
    let tty = stdin.is_terminal();
    let mut out = Vec::with_capacity(count);
    let mut lines = stdin.lock();
    for i in 1..=count {
        if tty {
            eprint!("component {i} of {count} (hex, not echoed): ");
            let _ = std::io::stderr().flush();
            set_echo(false);
        }
        let mut line = String::new();
        let read = lines.read_line(&mut line);
        if tty {
            set_echo(true);
            eprintln!();
        }
        match read {
            Ok(0) => {
                line.zeroize();
                return Err(Failure(format!(
                    "stdin ended after {} of {count} components",
                    i - 1
                )));
            }
            Ok(_) => {}
            Err(e) => return Err(Failure(format!("reading component {i}: {e}"))),
        }
        out.push(line.trim().to_owned());
        line.zeroize();
    }
    Ok(out)
}

/// Terminal echo on or off through stty(1): a component typed must not
/// stay on the screen. (No terminal library for one call.)
fn set_echo(on: bool) {
    let _ = std::process::Command::new("stty")
        .arg(if on { "echo" } else { "-echo" })
        .stdin(std::process::Stdio::inherit())
        .status();
}

fn form_lmk(
    out: &Path,
    files: &[PathBuf],
    count: usize,
    store: Option<&Path>,
) -> Result<(), Failure> {
    if out.exists() {
        return Err(Failure(format!(
            "{}: already exists; an LMK is never overwritten (every key under it would be lost)",
            out.display()
        )));
    }
    let mut texts = read_components(files, count)?;
    let parsed: Result<Vec<SecretKey>, _> = texts
        .iter()
        .enumerate()
        .map(|(i, t)| Lmk::parse_component(i + 1, t))
        .collect();
    for t in &mut texts {
        t.zeroize();
    }
    let components = parsed?;
    let lmk = Lmk::from_components(&components)?;
    for (i, c) in components.iter().enumerate() {
        println!("component {}: KCV {}", i + 1, c.kcv());
    }
    lmk.save_new(out)?;
    println!(
        "LMK (AES-256): KCV {}, written to {} (mode 0600)",
        lmk.kcv(),
        out.display()
    );
    if let Some(path) = store {
        KeyStore::create(path, &lmk)?;
        println!("key store {} created under it", path.display());
    }
    Ok(())
}

/// The store and the LMK; the store is created when missing and `create`.
fn open(args: &StoreArgs, create: bool) -> Result<(KeyStore, Lmk), Failure> {
    let path = match &args.store {
        Some(p) => p.clone(),
        None => match std::env::var_os(STORE_ENV) {
            Some(p) if !p.is_empty() => PathBuf::from(p),
            _ => {
                return Err(Failure(format!(
                    "no key store: pass --store PATH or set {STORE_ENV}"
                )));
            }
        },
    };
    let lmk = Lmk::load(&Lmk::path_from(args.lmk_file.as_deref())?)?;
    let store = if create && !path.exists() {
        KeyStore::create(&path, &lmk)?
    } else {
        KeyStore::open(&path, &lmk)?
    };
    Ok((store, lmk))
}

fn key_len(spec: &KeySpec) -> Result<usize, Failure> {
    let alg = spec.algorithm;
    let len = spec.bits / 8;
    if spec.bits % 8 != 0 || !alg.valid_len(len) {
        return Err(Failure(format!(
            "a {alg} key can not be {} bits (TDES: 128 or 192; AES: 128, 192 or 256)",
            spec.bits
        )));
    }
    Ok(len)
}

fn added(store: &mut KeyStore, lmk: &Lmk, spec: &KeySpec, key: &SecretKey) -> Result<(), Failure> {
    let entry = store.add(lmk, &spec.name, spec.key_type, key)?.clone();
    store.save()?;
    println!(
        "{} ({}, {}-{}, usage {}): KCV {}, stored in {}",
        entry.name,
        entry.key_type,
        entry.algorithm,
        entry.bits,
        entry.usage,
        entry.kcv,
        store.path().display()
    );
    Ok(())
}

fn generate(args: &StoreArgs, spec: &KeySpec) -> Result<(), Failure> {
    let len = key_len(spec)?;
    let (mut store, lmk) = open(args, true)?;
    if store.entry(&spec.name).is_some() {
        return Err(StoreError::Duplicate(spec.name.clone()).into());
    }
    let key = random::key(spec.algorithm, len)?;
    added(&mut store, &lmk, spec, &key)
}

#[allow(clippy::too_many_arguments)]
fn import(
    args: &StoreArgs,
    spec: &KeySpec,
    files: &[PathBuf],
    count: usize,
    under: Option<&str>,
    key_block: Option<&str>,
    cryptogram: Option<&str>,
    kcv: Option<&str>,
) -> Result<(), Failure> {
    let want = kcv.map(Kcv::parse).transpose()?;
    let (mut store, lmk) = open(args, true)?;
    if store.entry(&spec.name).is_some() {
        return Err(StoreError::Duplicate(spec.name.clone()).into());
    }
    let alg = spec.algorithm;
    let key = match under {
        None => {
            if key_block.is_some() || cryptogram.is_some() {
                return Err(Failure("--key-block and --cryptogram need --under".into()));
            }
            let len = key_len(spec)?;
            let mut texts = read_components(files, count)?;
            let parsed: Result<Vec<SecretKey>, String> = texts
                .iter()
                .enumerate()
                .map(|(i, t)| {
                    SecretKey::from_hex(alg, t)
                        .map_err(|e| format!("component {}: {e}", i + 1))
                        .and_then(|k| {
                            if k.len() == len {
                                Ok(k)
                            } else {
                                Err(format!(
                                    "component {}: {} bits, not {}",
                                    i + 1,
                                    k.len() * 8,
                                    spec.bits
                                ))
                            }
                        })
                })
                .collect();
            for t in &mut texts {
                t.zeroize();
            }
            let components = parsed.map_err(Failure)?;
            if components.len() < 2 {
                return Err(Failure(
                    "a key imported in clear needs two or more components".into(),
                ));
            }
            let mut key = components[0].clone();
            for (i, c) in components.iter().enumerate() {
                println!("component {}: KCV {}", i + 1, c.kcv());
                if i > 0 {
                    key = key.xor(c)?;
                }
            }
            key
        }
        Some(kek_name) => {
            let (kek_entry, kek) = store.get(kek_name, &lmk)?;
            if !matches!(kek_entry.key_type, KeyType::Zmk | KeyType::Tmk) {
                return Err(Failure(format!(
                    "{kek_name} is a {}, not a ZMK or TMK",
                    kek_entry.key_type
                )));
            }
            match (key_block, cryptogram, kek.algorithm()) {
                (Some(block), None, Algorithm::Aes) => {
                    let (header, key) = keyblock::unwrap(&kek, block.trim())?;
                    let kt = spec.key_type;
                    if header.usage != kt.usage(key.algorithm()) {
                        return Err(Failure(format!(
                            "the key block's usage {} is not a {kt}'s ({})",
                            String::from_utf8_lossy(&header.usage),
                            String::from_utf8_lossy(&kt.usage(key.algorithm()))
                        )));
                    }
                    key
                }
                (None, Some(hex), Algorithm::Tdes) => {
                    if want.is_none() {
                        return Err(Failure(
                            "--cryptogram needs --kcv: TDES ECB carries no check of its own".into(),
                        ));
                    }
                    let mut bytes = crate::hex::parse_hex(hex)?;
                    let key = decrypt_ecb(&kek, &mut bytes, alg);
                    bytes.zeroize();
                    key?
                }
                (Some(_), None, Algorithm::Tdes) => {
                    return Err(Failure(format!(
                        "{kek_name} is a TDES key: give the key as --cryptogram (TDES ECB)"
                    )));
                }
                (None, Some(_), Algorithm::Aes) => {
                    return Err(Failure(format!(
                        "{kek_name} is an AES key: give the key as --key-block (TR-31 version D)"
                    )));
                }
                _ => {
                    return Err(Failure(
                        "with --under, give one of --key-block or --cryptogram".into(),
                    ));
                }
            }
        }
    };
    if let Some(w) = want {
        if key.kcv() != w {
            return Err(Failure(format!(
                "the key's KCV is {}, not {w}: not imported",
                key.kcv()
            )));
        }
    }
    added(&mut store, &lmk, spec, &key)
}

/// A TDES key encrypted block by block under a TDES key-encryption key.
fn decrypt_ecb(kek: &SecretKey, bytes: &mut [u8], alg: Algorithm) -> Result<SecretKey, Failure> {
    if alg != Algorithm::Tdes {
        return Err(Failure(
            "only TDES keys travel under a TDES ZMK (an AES key would be weaker wrapped)".into(),
        ));
    }
    if bytes.len() % 8 != 0 {
        return Err(Failure("the cryptogram is not whole 8-byte blocks".into()));
    }
    let c = Tdes::new(kek).ok_or_else(|| Failure("the ZMK is not a TDES key".into()))?;
    for chunk in bytes.chunks_exact_mut(8) {
        let mut b = [0u8; 8];
        b.copy_from_slice(chunk);
        c.decrypt(&mut b);
        chunk.copy_from_slice(&b);
        b.zeroize();
    }
    Ok(SecretKey::tdes(bytes)?)
}

fn list(args: &StoreArgs) -> Result<(), Failure> {
    let (store, _lmk) = open(args, false)?;
    println!(
        "{}: LMK KCV {}, {} key(s)",
        store.path().display(),
        store.lmk_kcv(),
        store.entries().count()
    );
    println!(
        "{:<24} {:<5} {:<9} {:<6} {:<5} {:<10} KCV",
        "NAME", "TYPE", "ALGORITHM", "USAGE", "MODE", "EXPORTABLE"
    );
    for e in store.entries() {
        println!(
            "{:<24} {:<5} {:<9} {:<6} {:<5} {:<10} {}",
            e.name,
            e.key_type.name(),
            format!("{}-{}", e.algorithm, e.bits),
            e.usage,
            e.mode,
            if e.exportable { "yes" } else { "no" },
            e.kcv
        );
    }
    Ok(())
}

fn export(args: &StoreArgs, name: &str, under: &str) -> Result<(), Failure> {
    let (store, lmk) = open(args, false)?;
    let (entry, key) = store.get(name, &lmk)?;
    if !entry.exportable {
        return Err(Failure(format!(
            "{name} is a {} and not exportable",
            entry.key_type
        )));
    }
    let (kek_entry, kek) = store.get(under, &lmk)?;
    if !matches!(kek_entry.key_type, KeyType::Zmk | KeyType::Tmk) {
        return Err(Failure(format!(
            "{under} is a {}, not a ZMK or TMK",
            kek_entry.key_type
        )));
    }
    if under == name {
        return Err(Failure("a key is not exported under itself".into()));
    }
    match kek.algorithm() {
        Algorithm::Aes => {
            // The same header as in the store but for the LMK's KCV, which
            // means nothing to the receiver.
            let mut header = header_for(&entry.name, entry.key_type, &key, &lmk);
            header.blocks.retain(|(id, _)| id != "KP");
            header
                .blocks
                .push(("KP".into(), format!("01{}", kek.kcv())));
            let mut pad = [0u8; 32];
            random::fill(&mut pad)?;
            let block = keyblock::wrap(&kek, &header, &key, &pad)?;
            println!(
                "{name} under {under} (TR-31 version D key block), KCV {}:",
                key.kcv()
            );
            println!("{block}");
        }
        Algorithm::Tdes => {
            if key.algorithm() != Algorithm::Tdes || key.len() > kek.len() {
                return Err(Failure(format!(
                    "{name} ({}) can not travel under {under} ({}): wrap it under an AES ZMK",
                    key.describe(),
                    kek.describe()
                )));
            }
            let c = Tdes::new(&kek).ok_or_else(|| Failure("the ZMK is not TDES".into()))?;
            let mut hex = String::new();
            for chunk in key.expose_secret().chunks_exact(8) {
                let mut b = [0u8; 8];
                b.copy_from_slice(chunk);
                c.encrypt(&mut b);
                for x in b {
                    hex.push_str(&format!("{x:02X}"));
                }
            }
            println!("{name} under {under} (TDES ECB), KCV {}:", key.kcv());
            println!("{hex}");
        }
    }
    Ok(())
}
