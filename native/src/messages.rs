//! Core's messages name settings as they are spelled in config files, in backticks
//! (`max_length`); on the command line they are shown as the flags that set them
//! (`--max-length`). The settings are those `ember train` takes, which every other command's
//! flags share.

use crate::commands::train_args::Settings;

/// `message` with each backticked setting name written as its flag.
pub fn with_flags(message: &str) -> String {
    let settings = serde_json::to_value(Settings::default()).expect("settings serialise");
    let Some(names) = settings.as_object() else { return message.to_owned() };
    // Generation's settings, which `ember generate` alone takes.
    let generation = ["temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens"].map(String::from);
    let mut out = message.to_owned();
    for name in names.keys().chain(generation.iter()) {
        out = out.replace(&format!("`{name}`"), &format!("--{}", name.replace('_', "-")));
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn settings_become_flags_and_other_names_stay() {
        let message = "lower `per_device_train_batch_size` or `max_length`, store weights with `dtype` f16; tensor `lm_head.weight`";
        assert_eq!(
            super::with_flags(message),
            "lower --per-device-train-batch-size or --max-length, store weights with --dtype f16; tensor `lm_head.weight`"
        );
    }
}
