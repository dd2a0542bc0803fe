// hsftrain QC report: the cohort table (sortable), one panel per crop (QC figure, niivue
// viewer loaded on demand, rating), and qc_ratings.tsv saved as a download. Offline: every
// file is read from report_assets/ with <script> and <img> tags (no fetch, no network).
"use strict";
(function () {
  const cohort = JSON.parse(document.getElementById("cohort").textContent);
  const rows = cohort.rows;
  const storeKey = "hsftrain-ratings:" + cohort.id;
  const ratings = JSON.parse(localStorage.getItem(storeKey) || "{}");
  const pending = {};
  let niivueLoading = null;

  function el(tag, attrs, children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "text") node.textContent = v;
      else node.setAttribute(k, v);
    }
    for (const c of children || []) node.appendChild(c);
    return node;
  }
  function fmt(v, digits) {
    return v === null || v === undefined ? "" : Number(v).toFixed(digits);
  }
  function key(r) {
    return r.subject + "\t" + r.side;
  }
  function save() {
    localStorage.setItem(storeKey, JSON.stringify(ratings));
    const rated = rows.filter((r) => (ratings[key(r)] || {}).rating).length;
    document.getElementById("rated").textContent = rated + " / " + rows.filter((r) => !r.failed).length + " rated";
  }

  // ---- the table -------------------------------------------------------------------
  const columns = [
    ["rank", "#", (r) => r.rank],
    ["subject", "subject", (r) => r.subject],
    ["side", "side", (r) => r.side],
    ...cohort.labels.map((name) => [name, name + " (mm³)", (r) => r.volumes[name]]),
    ["whole", "whole (mm³)", (r) => r.whole],
    ["asymmetry", "L/R asym.", (r) => r.asymmetry],
    ["uncertainty", "mean unc.", (r) => r.uncertainty],
    ["score", "score", (r) => r.score],
    ["marks", "marks", (r) => r.marks.join("; ")],
    ["rating", "rating", (r) => (ratings[key(r)] || {}).rating || ""],
  ];
  let sortBy = ["rank", 1];

  function renderTable() {
    const [col, dir] = sortBy;
    const get = columns.find((c) => c[0] === col)[2];
    const sorted = rows.slice().sort((a, b) => {
      const x = get(a), y = get(b);
      if (x === y) return a.rank - b.rank;
      if (x === null || x === undefined || x === "") return 1;
      if (y === null || y === undefined || y === "") return -1;
      return (x < y ? -1 : 1) * dir;
    });
    const head = el("tr", {}, columns.map(([id, title]) => {
      const th = el("th", { "data-col": id, text: title + (id === col ? (dir > 0 ? " ▲" : " ▼") : "") });
      th.addEventListener("click", () => {
        sortBy = [id, sortBy[0] === id ? -sortBy[1] : 1];
        renderTable();
      });
      return th;
    }));
    const body = sorted.map((r) => {
      const cells = columns.map(([id, , g]) => {
        const v = g(r);
        const digits = id === "uncertainty" || id === "asymmetry" ? 3 : id === "score" ? 1 : 0;
        const text = v === null || v === undefined ? "" : typeof v === "number" ? fmt(v, digits) : String(v);
        return el("td", { class: "c-" + id, text: text });
      });
      const tr = el("tr", { "data-subject": r.subject, "data-side": r.side, class: r.marks.length ? "marked" : "" }, cells);
      tr.addEventListener("click", () => openPanel(r));
      return tr;
    });
    order = sorted;
    const table = document.getElementById("cohort-table");
    table.replaceChildren(el("thead", {}, [head]), el("tbody", {}, body));
  }

  // ---- one crop's panel ------------------------------------------------------------
  function loadScript(src) {
    return new Promise((resolve, reject) => {
      const s = el("script", { src: src });
      s.onload = resolve;
      s.onerror = () => reject(new Error("cannot load " + src));
      document.head.appendChild(s);
    });
  }
  window.hsftrainData = function (id, data) {
    if (pending[id]) pending[id](data);
  };
  function subjectData(r) {
    return new Promise((resolve, reject) => {
      pending[r.id] = resolve;
      loadScript("report_assets/data/" + r.id + ".js").catch(reject);
    });
  }

  // the QC figures' colours (the legend's): value 0 transparent
  function labelColours() {
    const cm = { R: [0], G: [0], B: [0], A: [0], I: [0], labels: [""] };
    for (const [value, name, [r, g, b]] of cohort.legend) {
      cm.R.push(r); cm.G.push(g); cm.B.push(b); cm.A.push(255); cm.I.push(value); cm.labels.push(name);
    }
    return cm;
  }

  async function showViewer(r, canvas, status) {
    if (!r.data) {
      status.textContent = "no image to show";
      return;
    }
    try {
      niivueLoading = niivueLoading || loadScript("report_assets/niivue/niivue.umd.js");
      await niivueLoading;
      const data = await subjectData(r);
      // another crop opened while this one loaded: its canvas is gone (niivue needs its parent)
      if (!canvas.isConnected) return;
      const nv = new niivue.Niivue({ backColor: [0, 0, 0, 1], show3Dcrosshair: true, isColorbar: false });
      await nv.attachToCanvas(canvas);
      const seg = await niivue.NVImage.loadFromBase64({ base64: data.seg, name: "seg.nii.gz", opacity: 0.5 });
      seg.setColormapLabel(labelColours());
      const volumes = [
        await niivue.NVImage.loadFromBase64({ base64: data.image, name: "image.nii.gz", colormap: "gray" }),
        seg,
      ];
      if (data.unc) {
        volumes.push(await niivue.NVImage.loadFromBase64({
          base64: data.unc, name: "uncertainty.nii.gz", colormap: "blue", opacity: 0.0,
        }));
      }
      for (const v of volumes) nv.addVolume(v);
      nv.setSliceType(nv.sliceTypeMultiplanar);
      if (data.centre_mm) {  // start at the labels' centre, as the QC figure does
        nv.scene.crosshairPos = nv.mm2frac(data.centre_mm);
        nv.drawScene();
      }
      status.textContent = "scroll or drag to move through slices" + (data.unc ? "; uncertainty: toggle below" : "");
      canvas.dataset.drawn = "1";
      const toggle = document.getElementById("unc-toggle");
      if (data.unc && toggle) {
        toggle.hidden = false;
        toggle.onchange = () => nv.setOpacity(2, toggle.checked ? 0.6 : 0.0);
      }
    } catch (err) {
      status.textContent = "viewer: " + err.message;
    }
  }

  let current = null;
  let order = rows;  // the table's order, for the keyboard's next / previous

  function openPanel(r) {
    current = r;
    const panel = document.getElementById("panel");
    const rating = ratings[key(r)] || { rating: "", note: "" };
    const select = el("select", { id: "rating" }, ["", "pass", "fix", "fail"].map((v) => el("option", { value: v, text: v || "(not rated)" })));
    select.value = rating.rating || "";
    const note = el("input", { id: "note", type: "text", placeholder: "note", value: rating.note || "" });
    const update = () => {
      ratings[key(r)] = { rating: select.value, note: note.value };
      save();
      // only the row's rating cell: re-drawing the table would swallow a click on a row
      // that blurs the note (its change event)
      for (const tr of document.querySelectorAll("#cohort-table tbody tr")) {
        if (tr.dataset.subject === r.subject && tr.dataset.side === r.side) {
          tr.querySelector(".c-rating").textContent = select.value;
        }
      }
    };
    select.addEventListener("change", update);
    note.addEventListener("change", update);
    const canvas = el("canvas", { id: "viewer", width: "640", height: "480" });
    const status = el("p", { class: "status", text: r.data ? "loading the viewer..." : "" });
    const legend = el("ul", { class: "legend" }, cohort.legend.map(([, name, rgb]) =>
      el("li", {}, [el("span", { class: "swatch", style: "background:rgb(" + rgb.join(",") + ")" }), document.createTextNode(name)])));
    panel.replaceChildren(
      el("h2", { text: r.subject + " (" + r.side + ")" }),
      el("p", { class: "marks", text: r.failed ? r.failed : (r.marks.join("; ") || "no mark") }),
      r.failed ? el("p", { text: "not segmented: nothing to rate" }) : el("div", { class: "rate" }, [el("label", { text: "rating " }, [select]), note]),
      r.qc ? el("figure", {}, [el("img", { src: r.qc, alt: "QC figure of " + r.subject }), legend]) : el("p", { text: "no QC figure (segment qc=false)" }),
      canvas, status,
      el("label", { id: "unc-toggle", hidden: "" }, [el("input", { type: "checkbox" }), document.createTextNode(" show uncertainty")]),
    );
    panel.hidden = false;
    if (r.data) showViewer(r, canvas, status);
  }

  // ---- qc_ratings.tsv ----------------------------------------------------------------
  function ratingsTsv() {
    const clean = (s) => String(s || "").replace(/[\t\r\n]+/g, " ").trim();
    const lines = ["subject\tside\trating\tnote"];
    for (const r of rows.slice().sort((a, b) => (a.subject + a.side < b.subject + b.side ? -1 : 1))) {
      if (r.failed) continue;
      const v = ratings[key(r)] || {};
      lines.push([r.subject, r.side, v.rating || "", clean(v.note)].join("\t"));
    }
    return lines.join("\n") + "\n";
  }
  document.getElementById("save").addEventListener("click", () => {
    const blob = new Blob([ratingsTsv()], { type: "text/tab-separated-values" });
    const a = el("a", { href: URL.createObjectURL(blob), download: "qc_ratings.tsv" });
    document.body.appendChild(a);
    a.click();
    a.remove();
  });

  // ---- loading a saved qc_ratings.tsv (another browser, a colleague's ratings) -------
  function loadRatings(text) {
    const lines = text.split(/\r?\n/).filter((l) => l.trim());
    const head = (lines.shift() || "").split("\t").map((c) => c.trim().toLowerCase());
    const col = (name) => head.indexOf(name);
    if (col("subject") < 0 || col("rating") < 0) return "no subject and rating columns";
    const known = new Set(rows.map(key));
    let loaded = 0, unknown = 0;
    for (const line of lines) {
      const cells = line.split("\t");
      let side = (cells[col("side")] || "").trim().toLowerCase();
      if (["", "crop", "na", "n/a"].includes(side)) side = "n/a";
      const k = (cells[col("subject")] || "").trim() + "\t" + side;
      const rating = (cells[col("rating")] || "").trim().toLowerCase();
      if (!known.has(k)) { unknown += 1; continue; }
      if (!["", "pass", "fix", "fail"].includes(rating)) continue;
      ratings[k] = { rating: rating, note: col("note") >= 0 ? (cells[col("note")] || "").trim() : "" };
      loaded += 1;
    }
    save();
    renderTable();
    return loaded + " rating(s) loaded" + (unknown ? ", " + unknown + " row(s) not in this report" : "");
  }
  document.getElementById("load").addEventListener("change", (event) => {
    const file = event.target.files[0];
    if (!file) return;
    const reader = new FileReader();
    reader.onload = () => { document.getElementById("loaded").textContent = loadRatings(reader.result); };
    reader.readAsText(file);
  });

  // ---- keyboard: n / p next and previous crop, 1 2 3 pass fix fail -----------------
  document.addEventListener("keydown", (event) => {
    if (["INPUT", "SELECT", "TEXTAREA"].includes(event.target.tagName) || event.ctrlKey || event.metaKey) return;
    const at = current ? order.indexOf(current) : -1;
    if (event.key === "n" || event.key === "p") {
      const next = order[Math.min(order.length - 1, Math.max(0, at + (event.key === "n" ? 1 : -1)))];
      if (next) openPanel(next);
    } else if (current && !current.failed && ["1", "2", "3"].includes(event.key)) {
      const select = document.getElementById("rating");
      select.value = ["pass", "fix", "fail"][Number(event.key) - 1];
      select.dispatchEvent(new Event("change"));
    }
  });

  renderTable();
  save();
})();
