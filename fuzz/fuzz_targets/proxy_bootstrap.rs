//! mast proxy's bootstrap: any text must be parsed, and any parsed
//! bootstrap compiled, without panicking (refusals are errors). DNS
//! clusters are left out, so fuzzing never resolves names.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let _ = mast_proxy::bootstrap::duration(s);
    let Ok(b) = mast_proxy::bootstrap::parse(s) else {
        return;
    };
    if b
        .static_resources
        .clusters
        .iter()
        .any(|c| c.type_.as_deref().is_some_and(|t| t != "STATIC"))
    {
        return;
    }
    let _ = mast_proxy::config::Config::compile(&b, s.to_owned());
});
