//! The loss curve as an SVG file: training loss per step, evaluation loss as dots.

pub fn loss_svg(train: &[(usize, f64)], eval: &[(usize, f64)]) -> String {
    let (w, h, pad) = (720.0, 400.0, 56.0);
    let all: Vec<(usize, f64)> = train.iter().chain(eval).copied().filter(|(_, l)| l.is_finite()).collect();
    let max_step = all.iter().map(|(s, _)| *s).max().unwrap_or(1).max(1) as f64;
    let (mut lo, mut hi) = all.iter().fold((f64::MAX, f64::MIN), |(lo, hi), (_, l)| (lo.min(*l), hi.max(*l)));
    if hi.partial_cmp(&lo) != Some(std::cmp::Ordering::Greater) {
        (lo, hi) = (lo - 0.5, lo + 0.5);
    }
    let x = |s: usize| pad + (s as f64 / max_step) * (w - 2.0 * pad);
    let y = |l: f64| h - pad - (l - lo) / (hi - lo) * (h - 2.0 * pad);
    let points: Vec<String> = train.iter().map(|&(s, l)| format!("{:.1},{:.1}", x(s), y(l))).collect();
    let dots: String = eval
        .iter()
        .map(|&(s, l)| format!(r##"<circle cx="{:.1}" cy="{:.1}" r="4" fill="#d62728"/>"##, x(s), y(l)))
        .collect();
    let ticks: String = (0..=4)
        .map(|i| {
            let l = lo + (hi - lo) * i as f64 / 4.0;
            format!(
                r##"<text x="{:.1}" y="{:.1}" font-size="12" text-anchor="end">{l:.3}</text>"##,
                pad - 6.0,
                y(l) + 4.0
            )
        })
        .collect();
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif">
<rect width="100%" height="100%" fill="white"/>
<text x="{cx}" y="24" font-size="16" text-anchor="middle">Training loss</text>
<line x1="{pad}" y1="{yb}" x2="{xr}" y2="{yb}" stroke="#444"/><line x1="{pad}" y1="{pad}" x2="{pad}" y2="{yb}" stroke="#444"/>
{ticks}<text x="{cx}" y="{xl}" font-size="12" text-anchor="middle">step (1–{steps})</text>
<polyline fill="none" stroke="#1f77b4" stroke-width="2" points="{pts}"/>
{dots}{legend}</svg>
"##,
        cx = w / 2.0,
        yb = h - pad,
        xr = w - pad,
        xl = h - pad + 36.0,
        steps = max_step as usize,
        pts = points.join(" "),
        legend = if eval.is_empty() {
            String::new()
        } else {
            format!(
                r##"<text x="{:.1}" y="44" font-size="12" fill="#d62728" text-anchor="end">● eval loss</text>"##,
                w - pad
            )
        },
    )
}
