//! Rebuilds the crate when a migration file is added or changed: `sqlx::migrate!` embeds
//! the `migrations/` folders at compile time, and cargo does not see files it reads.

fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
