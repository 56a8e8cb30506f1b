//! Key CSV files: realistic payer ids written with a `payer_id,customer_ref` header.

use std::path::{Path, PathBuf};

/// Writes a CSV with a `payer_id,customer_ref` header.
pub fn write_csv(dir: &Path, name: &str, ids: &[String]) -> PathBuf {
    let path = dir.join(name);
    let mut text = String::from("payer_id,customer_ref\n");
    for (i, id) in ids.iter().enumerate() {
        text.push_str(&format!("{id},CUST-{i:05}\n"));
    }
    std::fs::write(&path, text).expect("write csv");
    path
}

/// `n` distinct, realistic-looking billing keys (32 base64-ish characters).
pub fn payer_ids(n: usize, seed: &str) -> Vec<String> {
    (0..n)
        .map(|i| {
            let h = payple_reconcile::domain::stable_hash(format!("{seed}-{i}").as_bytes());
            let h2 = payple_reconcile::domain::stable_hash(format!("{i}-{seed}").as_bytes());
            format!("{h:016x}{h2:016X}")
        })
        .collect()
}

/// A key CSV (`payer_id,customer_ref`) holding these rows, quoted as needed.
pub fn write_csv_rows(dir: &Path, name: &str, rows: &[(&str, &str)]) -> PathBuf {
    let path = dir.join(name);
    let mut w = csv::Writer::from_path(&path).expect("create csv");
    w.write_record(["payer_id", "customer_ref"])
        .expect("header");
    for (id, customer_ref) in rows {
        w.write_record([id, customer_ref]).expect("row");
    }
    w.flush().expect("flush csv");
    path
}
