// status-tracker console: the only script. It keeps a live page fresh by fetching it again and
// swapping in its <main>: soon after the console's event stream (data-live, /console/events: each
// event's type and ids, never its numbers) says something changed, at most once every two
// seconds. While the stream is not open (connecting again, refused, or no EventSource at all) it
// polls instead, every data-refresh seconds while the tab is visible. Without this script every
// page works the same, only without refreshing itself.
"use strict";
(function () {
  const main = document.querySelector("main[data-refresh]");
  if (!main) return;
  const seconds = Number(main.dataset.refresh) || 15;
  // A callback often brings two events, a burst many: one fetch for them all.
  const SETTLE_MS = 500;
  const GAP_MS = 2000;
  const EVENT_TYPES = ["message.status_changed", "message.inbound", "reconciliation.completed"];
  let busy = false;
  let lastFetch = 0;
  let timer = null;
  let poller = null;

  function reading() {
    // Nothing is swapped under someone reading a detail they opened, or typing.
    return document.hidden || main.querySelector("details[open]") ||
      main.contains(document.activeElement) && document.activeElement.matches("input, select");
  }

  async function refresh() {
    timer = null;
    if (busy || reading()) {
      // The change is still to be shown: try again once the page is free.
      timer = setTimeout(refresh, GAP_MS);
      return;
    }
    busy = true;
    lastFetch = Date.now();
    try {
      const response = await fetch(location.href, { credentials: "same-origin" });
      if (!response.ok || response.redirected) return;
      const fresh = new DOMParser().parseFromString(await response.text(), "text/html");
      const freshMain = fresh.querySelector("main[data-refresh]");
      if (freshMain) {
        main.replaceChildren(...Array.from(freshMain.childNodes, (node) => document.importNode(node, true)));
        main.dataset.refreshed = new Date().toISOString();
      }
    } catch (error) {
      // Offline for a moment: the next event, or round, tries again.
    } finally {
      busy = false;
    }
  }

  function soon() {
    if (timer === null) {
      timer = setTimeout(refresh, Math.max(SETTLE_MS, lastFetch + GAP_MS - Date.now()));
    }
  }

  function poll() {
    main.dataset.following = "polling";
    if (poller === null) poller = setInterval(() => { if (!document.hidden) soon(); }, seconds * 1000);
  }

  function listen() {
    if (!main.dataset.live || !window.EventSource) {
      poll();
      return;
    }
    const source = new EventSource(main.dataset.live);
    source.addEventListener("open", () => {
      main.dataset.following = "events";
      if (poller !== null) {
        clearInterval(poller);
        poller = null;
      }
      // The stream tells of changes from the moment it opened; one fetch now shows those made
      // since the page was drawn (or while the stream was away), which no event will announce.
      soon();
    });
    for (const type of EVENT_TYPES) source.addEventListener(type, soon);
    // Connecting again (the browser does that itself), or refused for good (signed out): poll
    // meanwhile, or from now on.
    source.addEventListener("error", poll);
  }

  listen();
})();
