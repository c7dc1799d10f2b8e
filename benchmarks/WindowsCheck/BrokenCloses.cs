using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace WindowsCheck;

/// <summary>
/// Part (b): clients of the sample's listener that break the clean close, between two rounds of clients that
/// close it cleanly. A clean client sends a keep-alive GET /plaintext, reads the whole response, then closes
/// first (its FIN, then the server's: a passive close, whose socket the listener recycles where reuse is on).
/// The breakers: one closes right after its request without reading the response (the response then meets a
/// closed socket, an RST), one does so in the middle of a 256 KiB upload, one sends its FIN after the request
/// and vanishes (closes at once), one sends its FIN and then resets. Reads the listener counters from /stats
/// around each round and the transport's recycle events (the DisconnectEx error codes are in them).
/// </summary>
internal static class BrokenCloses
{
    internal sealed record Settings(int Clean, int BreakersEach, int Concurrency);

    private static readonly byte[] Get = Encoding.ASCII.GetBytes("GET /plaintext HTTP/1.1\r\nHost: localhost\r\n\r\n");
    private static readonly TimeSpan Timeout = TimeSpan.FromSeconds(10);

    private enum Kind
    {
        Clean,
        CloseWithoutReading,
        CloseMidUpload,
        FinThenVanish,
        FinThenReset,
    }

    public static async Task RunAsync(Report report, SampleProcess sample, Settings settings)
    {
        report.Heading("(b) listener clients that break the clean close");
        var endpoint = new IPEndPoint(IPAddress.Parse(sample.Urls[0].Host), sample.Urls[0].Port);
        var breakers = new[] { Kind.CloseWithoutReading, Kind.CloseMidUpload, Kind.FinThenVanish, Kind.FinThenReset };
        report.Fact(string.Create(CultureInfo.InvariantCulture,
            $"against {endpoint}: {settings.Clean} clean clients (keep-alive GET, read it all, close first), then {settings.BreakersEach} of each breaker ({string.Join(", ", breakers)}), then {settings.Clean} clean ones again; {settings.Concurrency} at a time"));

        var start = await StatsAsync(sample).ConfigureAwait(false);
        var before = await RoundAsync(endpoint, Enumerable.Repeat(Kind.Clean, settings.Clean), settings.Concurrency).ConfigureAwait(false);
        var afterClean = await SettledStatsAsync(sample).ConfigureAwait(false);
        var broken = await RoundAsync(endpoint, breakers.SelectMany(k => Enumerable.Repeat(k, settings.BreakersEach)), settings.Concurrency).ConfigureAwait(false);
        var afterBreakers = await SettledStatsAsync(sample).ConfigureAwait(false);
        var after = await RoundAsync(endpoint, Enumerable.Repeat(Kind.Clean, settings.Clean), settings.Concurrency).ConfigureAwait(false);
        var end = await SettledStatsAsync(sample).ConfigureAwait(false);

        report.Fact($"listener: engine {Text(start, "engine")}, reuse {(Bool(start, "reuseActive") ? "on" : "off")} ({Text(start, "reuseStatus")})");
        Round(report, "clean, before", before, start, afterClean);
        Round(report, "breakers", broken, afterClean, afterBreakers);
        Round(report, "clean, after", after, afterBreakers, end);
        report.Fact($"reuse at the end: {(Bool(end, "reuseActive") ? "on" : "off")} ({Text(end, "reuseStatus")})");
        OutboundChurn.ReportEvents(report, "server events (the transport's recycle events, and every warning and error logged)", sample.Events);

        report.Check(before.Failures.Count == 0 && after.Failures.Count == 0, "every clean client answered, before the breakers and after",
            string.Join("; ", before.Failures.Concat(after.Failures).Take(5)));
        report.Check(Number(end, "pendingDisconnects") == 0, "no reuse disconnect left pending", $"{Number(end, "pendingDisconnects")} pending");
        if (!Bool(start, "reuseActive"))
        {
            report.Skip("reuse stays on through the breakers and sockets are reused again after them",
                $"reuse is off on this listener ({Text(start, "reuseStatus")}){(OperatingSystem.IsWindows() ? "" : "; needs Windows (only there does the listener recycle by default)")}");
            return;
        }

        report.Check(Bool(end, "reuseActive"), "reuse did not fall back: it is still on after the breakers", Text(end, "reuseStatus"));
        var reusedAfter = Number(end, "socketsReused") - Number(afterBreakers, "socketsReused");
        report.Check(reusedAfter > 0, "sockets were reused again by the clean clients after the breakers", "none reused");
    }

    private sealed record Outcome(int Clients, List<string> Failures, TimeSpan Took);

    private static async Task<Outcome> RoundAsync(IPEndPoint endpoint, IEnumerable<Kind> kinds, int concurrency)
    {
        var queue = new Queue<Kind>(kinds);
        var clients = queue.Count;
        var failures = new List<string>();
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var workers = Enumerable.Range(0, concurrency).Select(_ => Task.Run(async () =>
        {
            while (true)
            {
                Kind kind;
                lock (queue)
                {
                    if (!queue.TryDequeue(out kind))
                    {
                        return;
                    }
                }

                try
                {
                    await ClientAsync(endpoint, kind).ConfigureAwait(false);
                }
                catch (Exception ex) when (ex is SocketException or IOException or OperationCanceledException or InvalidDataException)
                {
                    lock (failures)
                    {
                        failures.Add($"{kind}: {OutboundChurn.Describe(ex)}");
                    }
                }
            }
        })).ToArray();
        await Task.WhenAll(workers).ConfigureAwait(false);
        return new Outcome(clients, failures, clock.Elapsed);
    }

    private static async Task ClientAsync(IPEndPoint endpoint, Kind kind)
    {
        using var timeout = new CancellationTokenSource(Timeout);
        var ct = timeout.Token;
        using var socket = new Socket(endpoint.AddressFamily, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        await socket.ConnectAsync(endpoint, ct).ConfigureAwait(false);
        switch (kind)
        {
            case Kind.Clean:
                await socket.SendAsync(Get, SocketFlags.None, ct).ConfigureAwait(false);
                await ReadResponseAsync(socket, ct).ConfigureAwait(false);
                socket.Shutdown(SocketShutdown.Send);
                var buffer = new byte[64];
                if (await socket.ReceiveAsync(buffer, SocketFlags.None, ct).ConfigureAwait(false) != 0)
                {
                    throw new InvalidDataException("bytes after the response, where the server's FIN was due");
                }

                break;
            case Kind.CloseWithoutReading:
                await socket.SendAsync(Get, SocketFlags.None, ct).ConfigureAwait(false);
                break;
            case Kind.CloseMidUpload:
                await socket.SendAsync(Encoding.ASCII.GetBytes("POST /echo HTTP/1.1\r\nHost: localhost\r\nContent-Length: 1048576\r\n\r\n"), SocketFlags.None, ct).ConfigureAwait(false);
                await socket.SendAsync(new byte[256 * 1024], SocketFlags.None, ct).ConfigureAwait(false);
                break;
            case Kind.FinThenVanish:
                await socket.SendAsync(Get, SocketFlags.None, ct).ConfigureAwait(false);
                socket.Shutdown(SocketShutdown.Send);
                break;
            case Kind.FinThenReset:
                await socket.SendAsync(Get, SocketFlags.None, ct).ConfigureAwait(false);
                socket.Shutdown(SocketShutdown.Send);
                socket.LingerState = new LingerOption(true, 0);
                break;
        }

        // Dispose closes: with unread bytes (or a zero linger) that is an RST, else a FIN.
    }

    /// <summary>Reads one response with a Content-Length (the sample's /plaintext) to its last byte.</summary>
    private static async Task ReadResponseAsync(Socket socket, CancellationToken ct)
    {
        var received = new List<byte>(256);
        var buffer = new byte[1024];
        while (true)
        {
            var read = await socket.ReceiveAsync(buffer, SocketFlags.None, ct).ConfigureAwait(false);
            if (read == 0)
            {
                throw new InvalidDataException($"the server closed after {received.Count} bytes of the response");
            }

            received.AddRange(buffer.AsSpan(0, read));
            var text = Encoding.ASCII.GetString([.. received]);
            var headersEnd = text.IndexOf("\r\n\r\n", StringComparison.Ordinal);
            if (headersEnd < 0)
            {
                continue;
            }

            if (!text.StartsWith("HTTP/1.1 200", StringComparison.Ordinal))
            {
                throw new InvalidDataException($"not a 200: {text[..Math.Min(text.Length, 40)]}");
            }

            var lengthAt = text.IndexOf("Content-Length: ", StringComparison.OrdinalIgnoreCase);
            var length = int.Parse(text.AsSpan(lengthAt + 16, text.IndexOf('\r', lengthAt) - lengthAt - 16), CultureInfo.InvariantCulture);
            if (received.Count >= headersEnd + 4 + length)
            {
                return;
            }
        }
    }

    private static void Round(Report report, string name, Outcome outcome, JsonElement from, JsonElement to)
    {
        string Delta(string counter) => (Number(to, counter) - Number(from, counter)).ToString(CultureInfo.InvariantCulture);
        report.Fact(string.Create(CultureInfo.InvariantCulture,
            $"{name}: {outcome.Clients} clients in {outcome.Took.TotalSeconds:0.0} s, {outcome.Failures.Count} failed; the listener: accepted {Delta("connectionsAccepted")}, sockets created {Delta("socketsCreated")}, reused {Delta("socketsReused")}, reuse disconnects {Delta("reuseDisconnects")} (failed {Delta("disconnectFailures")}, timed out {Delta("disconnectTimeouts")}), recycled accepts failed {Delta("recycledAcceptFailures")}, resets {Delta("connectionResets")}, aborts {Delta("abortiveCloses")}, drain timeouts {Delta("drainTimeouts")}, TIME_WAIT closes {Delta("timeWaitCloses")}; reuse {(Bool(to, "reuseActive") ? "on" : "off")}"));
    }

    private static async Task<JsonElement> StatsAsync(SampleProcess sample)
        => (await sample.StatsAsync().ConfigureAwait(false)).GetProperty("counters");

    /// <summary>/stats once the round's connections have ended and their reuse disconnects finished (at most 10 s).</summary>
    private static async Task<JsonElement> SettledStatsAsync(SampleProcess sample)
    {
        var until = DateTime.UtcNow + TimeSpan.FromSeconds(10);
        JsonElement stats;
        long accepted = -1;
        while (true)
        {
            await Task.Delay(300).ConfigureAwait(false);
            var root = await sample.StatsAsync().ConfigureAwait(false);
            stats = root.GetProperty("counters");
            // Settled: nothing in a reuse disconnect, and no connection accepted since the last look (the
            // /stats request's own aside) is still open on the server.
            var now = Number(stats, "connectionsAccepted");
            if ((Number(stats, "pendingDisconnects") == 0 && now == accepted) || DateTime.UtcNow > until)
            {
                return stats;
            }

            accepted = now;
        }
    }

    private static long Number(JsonElement counters, string name) => counters.GetProperty(name).GetInt64();

    private static bool Bool(JsonElement counters, string name) => counters.GetProperty(name).GetBoolean();

    private static string Text(JsonElement counters, string name) => counters.GetProperty(name).ToString();
}
