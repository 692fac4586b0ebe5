//! Links that run the page: `?model=URL&adapter=URL&prompt=TEXT&template=human-assistant|none
//! &greedy=1&max_new_tokens=N&device=cpu|webgpu&four_bit=1&run=1` loads the model (and adapter) from those
//! folder URLs (or Hub ids) and generates, so a model card can link "try this adapter in your
//! browser". Without `run=1` the fields are only filled in. `#status` reads `done` at the end.

use std::cell::RefCell;

use leptos::prelude::*;

use super::{send, State};
use crate::protocol::{GenerateRequest, Reply, Request, Side};

#[derive(Clone, Debug, PartialEq)]
pub struct Link {
    pub model: Option<String>,
    pub adapter: Option<String>,
    pub prompt: Option<String>,
    /// The Human/Assistant template (`template=human-assistant`, the default) or none.
    pub template: bool,
    pub greedy: bool,
    pub max_new_tokens: usize,
    /// `device=cpu` forces the CPU (WebAssembly); `webgpu` (or nothing) lets the page choose.
    pub force_cpu: bool,
    /// `four_bit=1` loads the model's Linear layers in 4-bit (QLoRA's nf4), as the checkbox does.
    pub four_bit: bool,
    pub run: bool,
}

/// Where a running link is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Stage {
    LoadingModel,
    LoadingAdapter,
    Generating,
    Finished,
}

thread_local! {
    static LINK: RefCell<Option<(Link, Stage)>> = const { RefCell::new(None) };
}

/// The link in a URL's query parameters; `Ok(None)` when it names none the page knows.
pub fn parse(pairs: &[(String, String)]) -> Result<Option<Link>, String> {
    let mut link = Link {
        model: None,
        adapter: None,
        prompt: None,
        template: true,
        greedy: false,
        max_new_tokens: GenerateRequest::default().max_new_tokens,
        force_cpu: false,
        four_bit: false,
        run: false,
    };
    const KEYS: [&str; 9] =
        ["model", "adapter", "prompt", "template", "greedy", "max_new_tokens", "device", "four_bit", "run"];
    let flag = |key: &str, value: &str| match value {
        "1" | "true" | "yes" | "" => Ok(true),
        "0" | "false" | "no" => Ok(false),
        other => Err(format!("link parameter {key}: \"{other}\" is not 1 or 0")),
    };
    for (key, value) in pairs {
        match key.as_str() {
            "model" => link.model = Some(value.clone()),
            "adapter" => link.adapter = Some(value.clone()),
            "prompt" => link.prompt = Some(value.clone()),
            "template" => {
                link.template = match value.as_str() {
                    "human-assistant" => true,
                    "none" => false,
                    other => return Err(format!("link parameter template: \"{other}\" (human-assistant or none)")),
                }
            }
            "greedy" => link.greedy = flag(key, value)?,
            "run" => link.run = flag(key, value)?,
            "four_bit" => link.four_bit = flag(key, value)?,
            "max_new_tokens" => {
                link.max_new_tokens = value.parse().ok().filter(|n| (1..=4096).contains(n)).ok_or_else(|| {
                    format!("link parameter max_new_tokens: \"{value}\" is not a number from 1 to 4096")
                })?
            }
            "device" => {
                link.force_cpu = match value.as_str() {
                    "cpu" => true,
                    "webgpu" | "auto" => false,
                    other => return Err(format!("link parameter device: \"{other}\" (cpu or webgpu)")),
                }
            }
            // Other parameters (a tracker's, say) are not the page's.
            _ => {}
        }
    }
    if link.run && link.model.is_none() {
        return Err("link parameter run=1 needs model=URL".into());
    }
    Ok(pairs.iter().any(|(k, _)| KEYS.contains(&k.as_str())).then_some(link))
}

/// The link of the page's own URL, kept for [`on_reply`]; a malformed one is shown as an error.
pub fn from_location(state: State) -> Option<Link> {
    let href = web_sys::window()?.location().href().ok()?;
    let url = web_sys::Url::new(&href).ok()?;
    let entries = js_sys::try_iter(&url.search_params()).ok().flatten()?;
    let pairs: Vec<(String, String)> = entries
        .filter_map(|entry| {
            let pair: js_sys::Array = entry.ok()?.into();
            Some((pair.get(0).as_string()?, pair.get(1).as_string()?))
        })
        .collect();
    match parse(&pairs) {
        Ok(Some(link)) => {
            LINK.with(|l| *l.borrow_mut() = Some((link.clone(), Stage::LoadingModel)));
            Some(link)
        }
        Ok(None) => None,
        Err(message) => {
            state.fail(message);
            None
        }
    }
}

/// The page's link, if its URL has one.
pub fn current() -> Option<Link> {
    LINK.with(|l| l.borrow().as_ref().map(|(link, _)| link.clone()))
}

fn running() -> Option<(Link, Stage)> {
    LINK.with(|l| l.borrow().clone()).filter(|(link, _)| link.run)
}

fn set_stage(state: State, stage: Stage, status: &str) {
    LINK.with(|l| {
        if let Some((_, s)) = l.borrow_mut().as_mut() {
            *s = stage;
        }
    });
    state.status.set(status.to_owned());
}

/// Whether a running link names its own adapter (the one kept from the last session is not
/// applied, and the link's is not kept in its place).
pub fn brings_adapter() -> bool {
    running().is_some_and(|(link, _)| link.adapter.is_some())
}

/// Moves a running link on as the worker answers: started → load the model → load the adapter
/// → generate → `done`.
pub fn on_reply(state: State, reply: &Reply) {
    let Some((link, stage)) = running() else { return };
    match (reply, stage) {
        (Reply::Failed { message }, s) if s != Stage::Finished => {
            set_stage(state, Stage::Finished, &format!("failed: {message}"));
        }
        (Reply::Started { .. }, Stage::LoadingModel) => {
            state.status.set("loading the model".into());
            let url = link.model.clone().unwrap_or_default();
            send(state, &Request::LoadModelUrl { url, four_bit: state.four_bit.get_untracked() }, Vec::new());
        }
        (Reply::ModelLoaded { .. }, Stage::LoadingModel) => match &link.adapter {
            Some(url) => {
                set_stage(state, Stage::LoadingAdapter, "loading the adapter");
                send(state, &Request::LoadAdapterUrl { url: url.clone() }, Vec::new());
            }
            None => generate(state, &link),
        },
        (Reply::AdapterReady { .. }, Stage::LoadingAdapter) => generate(state, &link),
        (Reply::Generated { side, .. }, Stage::Generating) if *side == Side::Adapter || link.adapter.is_none() => {
            set_stage(state, Stage::Finished, "done")
        }
        _ => {}
    }
}

/// Whether the adapter now arriving is the link's (not to be kept over the user's own).
pub fn loading_adapter() -> bool {
    running().is_some_and(|(_, stage)| stage == Stage::LoadingAdapter)
}

fn generate(state: State, link: &Link) {
    set_stage(state, Stage::Generating, "generating");
    for output in [state.output_base, state.output_adapter, state.stats_base, state.stats_adapter] {
        output.set(String::new());
    }
    let request = GenerateRequest {
        prompt: link.prompt.clone().unwrap_or_default(),
        template: link.template,
        sample: !link.greedy,
        max_new_tokens: link.max_new_tokens,
        with_adapter: link.adapter.is_some(),
        ..GenerateRequest::default()
    };
    send(state, &Request::Generate(request), Vec::new());
}
