//! The Payple client against the simulator over real HTTP: classification, tokens, retries, secrets.
