using System.Collections.Concurrent;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Http.Headers;
using System.Net.Sockets;
using Transport.Winsock;

namespace WindowsCheck;

/// <summary>
/// Part (a): HttpClient on <see cref="WinsockReuse.CreateConnectCallback(WinsockOutboundConnectionFactory)"/>,
/// reuse forced on, churning <c>Connection: close</c> requests to the sample (its two ports, two requests to
/// each in turn, so a recycled socket always has an endpoint it may connect to), every
/// <see cref="Settings.UploadEvery"/>th one a POST /echo of <see cref="Settings.UploadBytes"/> checked byte for
/// byte on the way back. Records every connect's time (a stall: 1 s or more, a SYN retransmit's worth),
/// refused and timed-out connects, the outbound counters (sockets created against reused), and from the
/// server the client ports its requests came from: a recycled socket that kept its port comes back on it.
/// </summary>
internal static class OutboundChurn
{
    internal sealed record Settings(int Requests, int Concurrency, int UploadEvery, int UploadBytes, TimeSpan Deadline, TimeSpan ConnectTimeout);

    internal static readonly TimeSpan Stall = TimeSpan.FromSeconds(1);

    public static async Task RunAsync(Report report, SampleProcess sample, Settings settings)
    {
        report.Heading("(a) outbound churn: Connection: close, reuse forced on, uploads");
        report.Fact(string.Create(CultureInfo.InvariantCulture,
            $"{settings.Requests:N0} requests, {settings.Concurrency} at a time, to {string.Join(" and ", sample.Urls.Select(u => u.Authority))} (one server, two ports, two requests to each in turn); every {settings.UploadEvery}th a POST /echo of {settings.UploadBytes / (1024 * 1024)} MiB"));

        await sample.PortsAsync(reset: true).ConfigureAwait(false);
        var events = new EventTally();
        await using var factory = new WinsockOutboundConnectionFactory(
            new WinsockOutboundOptions { ReuseSockets = true, DeferFinTimeout = TimeSpan.FromSeconds(2) }, logger: events);
        var inner = WinsockReuse.CreateConnectCallback(factory);
        var connects = new Latencies();
        long refused = 0, timedOut = 0, otherConnectFailures = 0;
        var stalls = new ConcurrentQueue<string>();
        var clock = Stopwatch.StartNew();
        var handler = new SocketsHttpHandler
        {
            UseProxy = false,
            ConnectCallback = async (context, cancellationToken) =>
            {
                using var timeout = CancellationTokenSource.CreateLinkedTokenSource(cancellationToken);
                timeout.CancelAfter(settings.ConnectTimeout);
                var started = Stopwatch.GetTimestamp();
                try
                {
                    var stream = await inner(context, timeout.Token).ConfigureAwait(false);
                    var took = Stopwatch.GetElapsedTime(started);
                    connects.Add(took);
                    if (took >= Stall)
                    {
                        stalls.Enqueue(string.Create(CultureInfo.InvariantCulture, $"{took.TotalMilliseconds:0} ms at {clock.Elapsed.TotalSeconds:0.0} s"));
                    }

                    return stream;
                }
                catch (SocketException ex) when (ex.SocketErrorCode == SocketError.ConnectionRefused)
                {
                    Interlocked.Increment(ref refused);
                    throw;
                }
                catch (Exception ex) when ((ex is SocketException { SocketErrorCode: SocketError.TimedOut })
                    || (ex is OperationCanceledException && timeout.IsCancellationRequested && !cancellationToken.IsCancellationRequested))
                {
                    Interlocked.Increment(ref timedOut);
                    throw new SocketException((int)SocketError.TimedOut, $"no connection within {settings.ConnectTimeout.TotalSeconds:0} s");
                }
                catch (Exception ex) when (ex is not OperationCanceledException)
                {
                    Interlocked.Increment(ref otherConnectFailures);
                    throw;
                }
            },
        };
        using var client = new HttpClient(handler) { Timeout = TimeSpan.FromSeconds(60) };
        client.DefaultRequestHeaders.ConnectionClose = true;

        var upload = new byte[settings.UploadBytes];
        new Random(20).NextBytes(upload);
        long next = -1, ok = 0, uploads = 0;
        var failures = new ConcurrentDictionary<string, int>(StringComparer.Ordinal);
        using var deadline = new CancellationTokenSource(settings.Deadline);
        var workers = Enumerable.Range(0, settings.Concurrency).Select(_ => Task.Run(async () =>
        {
            var buffer = new byte[64 * 1024];
            long i;
            while ((i = Interlocked.Increment(ref next)) < settings.Requests && !deadline.IsCancellationRequested)
            {
                var url = sample.Urls[(int)(i / 2 % sample.Urls.Count)];
                var isUpload = i % settings.UploadEvery == settings.UploadEvery - 1;
                try
                {
                    var failure = isUpload
                        ? await UploadAsync(client, url, upload, buffer, deadline.Token).ConfigureAwait(false)
                        : await PlaintextAsync(client, url, deadline.Token).ConfigureAwait(false);
                    if (failure is null)
                    {
                        Interlocked.Increment(ref ok);
                        if (isUpload)
                        {
                            Interlocked.Increment(ref uploads);
                        }
                    }
                    else
                    {
                        failures.AddOrUpdate(failure, 1, static (_, n) => n + 1);
                    }
                }
                catch (OperationCanceledException) when (deadline.IsCancellationRequested)
                {
                }
                catch (Exception ex) when (ex is HttpRequestException or IOException or OperationCanceledException)
                {
                    failures.AddOrUpdate(Describe(ex), 1, static (_, n) => n + 1);
                }
            }
        })).ToArray();
        await Task.WhenAll(workers).ConfigureAwait(false);
        var elapsed = clock.Elapsed;
        var finished = !deadline.IsCancellationRequested;

        // The last connections' deferred FINs and reuse disconnects settle before the counters are read.
        await Task.Delay(TimeSpan.FromSeconds(2.5)).ConfigureAwait(false);
        var c = factory.Counters;
        var (serverRequests, distinctPorts) = await sample.PortsAsync(reset: true).ConfigureAwait(false);
        var expectedUploads = settings.Requests / settings.UploadEvery;

        report.Fact(string.Create(CultureInfo.InvariantCulture,
            $"took {elapsed.TotalSeconds:0.0} s: {ok:N0} requests answered in full ({uploads} uploads echoed intact of {expectedUploads}), {failures.Values.Sum():N0} failed"));
        foreach (var (kind, count) in failures.OrderByDescending(static f => f.Value).Take(8))
        {
            report.Fact($"  failed: {count} x {kind}");
        }

        report.Fact($"connect time: {connects.Summary()}; {connects.Over(Stall)} of 1 s or more{(stalls.IsEmpty ? "" : $": {string.Join(", ", stalls.Take(10))}")}");
        report.Fact(string.Create(CultureInfo.InvariantCulture,
            $"connects: {c.Connects:N0} made, {c.ConnectFailures} failed (refused {refused}, timed out {timedOut}, other {otherConnectFailures})"));
        report.Fact(string.Create(CultureInfo.InvariantCulture,
            $"sockets: {c.SocketsCreated:N0} created, {c.SocketsReused:N0} reused; reuse disconnects {c.ReuseDisconnects:N0} (failed {c.DisconnectFailures}, timed out {c.DisconnectTimeouts}); recycled connects failed {c.RecycledConnectFailures}, retried on a new socket {c.RecycledConnectRetries}; pooled now {c.PooledSockets}"));
        report.Fact(string.Create(CultureInfo.InvariantCulture,
            $"closes: server closed first {c.PeerClosedFirst:N0}, TIME_WAIT here {c.TimeWaitCloses:N0}, deferred FIN ran out {c.DeferFinTimeouts}, resets {c.ConnectionResets}, aborts {c.AbortiveCloses}"));
        report.Fact(string.Create(CultureInfo.InvariantCulture,
            $"ports: the server saw {serverRequests:N0} requests from {distinctPorts:N0} client ports, so {Math.Max(0, serverRequests - distinctPorts):N0} came from a port an earlier connection of this run had used: a recycled socket that kept its port (Windows keeps it; .NET's emulation on Linux binds anew), or the OS handing out an ephemeral port again"));
        report.Fact($"reuse status: {c.ReuseStatus}");
        ReportEvents(report, "outbound recycle events", events);
        ReportEvents(report, "server events (the transport's recycle events, and every warning and error logged)", sample.Events);
        sample.Events.Counts.Clear();

        report.Check(finished, "the churn finished in time", $"stopped at the {settings.Deadline.TotalSeconds:0} s deadline after {Interlocked.Read(ref next)} requests");
        report.Check(failures.IsEmpty && ok == settings.Requests, "every request answered in full, every upload echoed intact", $"{settings.Requests - ok} not");
        report.Check(refused == 0 && timedOut == 0 && otherConnectFailures == 0, "no connect refused, timed out or failed", $"refused {refused}, timed out {timedOut}, other {otherConnectFailures}");
        report.Check(connects.Over(Stall) == 0, "no connect took 1 s or more (a dropped SYN and its retransmit)", $"{connects.Over(Stall)} did");
        report.Check(c.SocketsReused > 0, "sockets were reused (reuse forced on, two endpoints in turn)", $"{c.SocketsCreated} created, none reused; {c.DisconnectTimeouts} reuse disconnects timed out");
    }

    private static async Task<string?> PlaintextAsync(HttpClient client, Uri server, CancellationToken cancellationToken)
    {
        using var response = await client.GetAsync(new Uri(server, "/plaintext"), cancellationToken).ConfigureAwait(false);
        var body = await response.Content.ReadAsStringAsync(cancellationToken).ConfigureAwait(false);
        return response.IsSuccessStatusCode && body == "Hello, World!" ? null : $"GET /plaintext: {(int)response.StatusCode}, {body.Length} bytes";
    }

    private static async Task<string?> UploadAsync(HttpClient client, Uri server, byte[] upload, byte[] buffer, CancellationToken cancellationToken)
    {
        using var content = new ByteArrayContent(upload);
        content.Headers.ContentType = new MediaTypeHeaderValue("application/octet-stream");
        using var response = await client.PostAsync(new Uri(server, "/echo"), content, cancellationToken).ConfigureAwait(false);
        if (!response.IsSuccessStatusCode)
        {
            return $"POST /echo: {(int)response.StatusCode}";
        }

        using var body = await response.Content.ReadAsStreamAsync(cancellationToken).ConfigureAwait(false);
        var offset = 0;
        int read;
        while ((read = await body.ReadAsync(buffer, cancellationToken).ConfigureAwait(false)) > 0)
        {
            if (offset + read > upload.Length || !buffer.AsSpan(0, read).SequenceEqual(upload.AsSpan(offset, read)))
            {
                return $"POST /echo: the echo differs from the upload at or after byte {offset}";
            }

            offset += read;
        }

        return offset == upload.Length ? null : $"POST /echo: {offset} of {upload.Length} bytes came back";
    }

    /// <summary>An exception and its inner ones, as one short line.</summary>
    internal static string Describe(Exception ex)
    {
        var parts = new List<string>();
        for (var e = ex; e is not null && parts.Count < 3; e = e.InnerException)
        {
            parts.Add(e is SocketException se ? $"SocketException {se.SocketErrorCode}" : $"{e.GetType().Name}: {e.Message}");
        }

        return string.Join(" <- ", parts);
    }

    internal static void ReportEvents(Report report, string what, EventTally events)
    {
        if (events.Counts.IsEmpty)
        {
            report.Fact($"{what}: none");
            return;
        }

        foreach (var (line, count) in events.Counts.OrderByDescending(static e => e.Value).Take(12))
        {
            report.Fact($"{what}: {count} x {line}");
        }
    }
}
