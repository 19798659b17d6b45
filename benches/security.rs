//! The soft HSM's per-request work: a MAC made (an answer's DE64), a MAC
//! verified (a request's), a PIN block translated (DE52, terminal key to
//! zone key), over the sample 0200's bytes. Each call builds its key
//! schedules from the key, as the primitives do today; keeping ciphers
//! per key would be the first thing to try if these show up in a profile.
//!
//! Run with `cargo bench --bench security` (not in CI).

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use switchyard::iso8583::samples;
use switchyard::iso8583::specs::iso87ascii;
use switchyard::security::pinblock::{self, Pin, PinFormat};
use switchyard::security::{SecretKey, dukpt, mac};

fn benches(c: &mut Criterion) {
    let msg = samples::typical_0200(iso87ascii())
        .expect("sample 0200")
        .to_vec();
    let tak = SecretKey::tdes(&[0x3D; 16]).expect("key");
    let zak = SecretKey::aes(&[0x5E; 16]).expect("key");
    let retail = mac::retail_mac(&tak, &msg, mac::Padding::Method1).expect("mac");
    let cmac = mac::cmac(&zak, &msg).expect("mac");

    let mut g = c.benchmark_group(format!("mac_{}_bytes", msg.len()));
    g.bench_function("retail_generate", |b| {
        b.iter(|| mac::retail_mac(&tak, black_box(&msg), mac::Padding::Method1))
    });
    g.bench_function("retail_verify", |b| {
        b.iter(|| mac::verify_retail_mac(&tak, black_box(&msg), mac::Padding::Method1, &retail))
    });
    g.bench_function("cmac_generate", |b| {
        b.iter(|| mac::cmac(&zak, black_box(&msg)))
    });
    g.bench_function("cmac_verify", |b| {
        b.iter(|| mac::verify_cmac(&zak, black_box(&msg), &cmac))
    });
    g.finish();

    let pan = "4761739001010119";
    let tpk = SecretKey::tdes(&[0x11; 16]).expect("key");
    let zpk_tdes = SecretKey::tdes(&[0x22; 16]).expect("key");
    let zpk_aes = SecretKey::aes(&[0x33; 16]).expect("key");
    let pin = Pin::new("1234").expect("pin");
    let block = pinblock::encrypt(&tpk, PinFormat::Iso0, &pin, pan, &[0; 8]).expect("block");
    let bdk = SecretKey::tdes(&[0x44; 16]).expect("key");
    let ksn = dukpt::Ksn::new(&[0xFF, 0xFF, 0x98, 0x76, 0x54, 0x32, 0x10, 0xE3, 0x0F, 0xF0])
        .expect("ksn");
    let dukpt_key = dukpt::pin_key(&bdk, &ksn).expect("key");
    let dukpt_block =
        pinblock::encrypt(&dukpt_key, PinFormat::Iso0, &pin, pan, &[0; 8]).expect("block");

    let mut g = c.benchmark_group("pin_translate");
    g.bench_function("tpk_format0_to_zpk_format0", |b| {
        b.iter(|| {
            pinblock::translate(
                black_box(&block),
                &tpk,
                &zpk_tdes,
                PinFormat::Iso0,
                pan,
                &[0; 8],
            )
        })
    });
    g.bench_function("tpk_format0_to_zpk_format4", |b| {
        b.iter(|| {
            pinblock::translate(
                black_box(&block),
                &tpk,
                &zpk_aes,
                PinFormat::Iso4,
                pan,
                &[9; 8],
            )
        })
    });
    // A counter with 8 bits set: 8 key generation steps, a typical cost.
    g.bench_function("dukpt_format0_to_zpk_format0", |b| {
        b.iter(|| {
            let key = dukpt::pin_key(&bdk, black_box(&ksn)).expect("key");
            pinblock::translate(&dukpt_block, &key, &zpk_tdes, PinFormat::Iso0, pan, &[0; 8])
        })
    });
    g.finish();
}

criterion_group!(security, benches);
criterion_main!(security);
