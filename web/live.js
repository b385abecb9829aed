// Follows a running run's console through server-sent events; the page works without it.
(function () {
  var box = document.getElementById('console');
  if (!box || box.dataset.live !== '1' || !window.EventSource) return;
  // Live lines continue from where the page's own copy of the console stopped.
  var url = '/run/' + box.dataset.uuid + '/console?offset=' + box.dataset.offset + '&lines=' + box.querySelectorAll('.line').length;
  var source = new EventSource(url);
  var stick = function () { return window.innerHeight + window.scrollY >= document.body.scrollHeight - 40; };
  source.addEventListener('lines', function (event) {
    var follow = stick();
    box.insertAdjacentHTML('beforeend', JSON.parse(event.data).html);
    if (follow) window.scrollTo(0, document.body.scrollHeight);
  });
  source.addEventListener('state', function (event) {
    var run = JSON.parse(event.data);
    var status = document.getElementById('status');
    status.textContent = run.status;
    status.className = 'pill ' + run.status;
    var progress = document.getElementById('progress');
    if (progress && run.progressText) {
      progress.textContent = '';
      if (run.progressPercent !== null) {
        var bar = document.createElement('progress');
        bar.max = 100;
        bar.value = run.progressPercent;
        progress.appendChild(bar);
        progress.appendChild(document.createTextNode(' '));
      }
      var text = document.createElement('span');
      text.className = 'text';
      text.textContent = run.progressText;
      progress.appendChild(text);
    }
  });
  var done = function (text) {
    source.close();
    var following = document.getElementById('following');
    if (following) following.textContent = text;
  };
  source.addEventListener('end', function (event) {
    var run = JSON.parse(event.data);
    done('The run ended: ' + run.outcomeText + '.');
    // Reload for the final facts and the artifacts.
    setTimeout(function () { location.reload(); }, 800);
  });
  source.addEventListener('cut', function (event) {
    done(JSON.parse(event.data).message + ' Reload the page to see the rest.');
  });
})();
