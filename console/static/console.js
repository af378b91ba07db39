// Draws the console's charts with plotly.js from the JSON the page carries (no inline script:
// the Content-Security-Policy allows scripts from this origin only).
"use strict";
(function () {
  const layout = (title, yTitle, range) => ({
    title: { text: title, font: { size: 13 } },
    margin: { l: 50, r: 10, t: 30, b: 40 },
    xaxis: { type: "date", range: range },
    yaxis: { title: { text: yTitle }, rangemode: "tozero" },
    legend: { orientation: "h", y: -0.2 },
  });
  const line = (x, y, name) => ({
    x: x, y: y, name: name, type: "scatter", mode: "lines+markers", marker: { size: 4 }, connectgaps: false,
  });
  const config = { displaylogo: false, responsive: true };

  function draw(prefix, s, range) {
    const x = s.times;
    Plotly.newPlot(prefix + "-rates", [
      line(x, s.accepted, "calls accepted /s"),
      line(x, s.stored, "events stored /s"),
    ], layout("Intake and drain", "per second", range), config);
    Plotly.newPlot(prefix + "-queue", [
      line(x, s.queue, "queued jobs"),
      Object.assign(line(x, s.oldest_age, "oldest job (s)"), { yaxis: "y2" }),
    ], Object.assign(layout("Queue", "jobs", range), {
      yaxis2: { overlaying: "y", side: "right", title: { text: "seconds" }, rangemode: "tozero" },
    }), config);
    const problems = [line(x, s.unavailable, "503 /s"), line(x, s.rejected, "rejected (past hour)")];
    for (const [reason, values] of Object.entries(s.refused)) {
      problems.push(line(x, values, "refused /s: " + reason));
    }
    Plotly.newPlot(prefix + "-problems", problems, layout("503s, refusals, rejects", "calls", range), config);
  }

  const overview = document.getElementById("chart-data");
  if (overview) {
    const data = JSON.parse(overview.textContent);
    // the whole hour and day on the axis, in the browser's zone
    draw("chart-hour", data.hour, [new Date(data.now - 3600e3), new Date(data.now)]);
    draw("chart-day", data.day, [new Date(data.now - 86400e3), new Date(data.now)]);
  }
  const mailing = document.getElementById("mailing-data");
  if (mailing) {
    const m = JSON.parse(mailing.textContent);
    Plotly.newPlot("chart-mailing", [
      { x: m.hours, y: m.opens, name: "opens", type: "bar" },
      { x: m.hours, y: m.clicks, name: "clicks", type: "bar" },
    ], {
      barmode: "group",
      margin: { l: 50, r: 10, t: 10, b: 45 },
      xaxis: { title: { text: "hours after the send" } },
      yaxis: { title: { text: "events per hour" } },
    }, config);
  }
  document.documentElement.dataset.chartsDrawn = "yes";
})();
