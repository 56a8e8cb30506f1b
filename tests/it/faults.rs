//! The fault-tolerance suite: crashes, storms, pushback, expiry, database trouble, bad input, secrets.
