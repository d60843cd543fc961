//! The quota page: HTML, CSS and script in one file compiled into the
//! binary, so it needs nothing from outside (air-gapped sites, strict
//! egress). It fetches `quotas` (relative, so a path prefix in front of the
//! admin listener keeps working) and redraws itself every few seconds.

/// The page.
pub const PAGE: &str = include_str!("page.html");

/// The page's `Content-Security-Policy`: its own inline script and style,
/// requests to its own origin, an empty `data:` icon (so the browser asks
/// for no `/favicon.ico`), nothing else: no external asset can load, and
/// a value that slipped into markup could not run a script from
/// elsewhere.
pub const PAGE_POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; \
     style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";
