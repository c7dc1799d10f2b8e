using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text;
using System.Text.Json;

namespace TransportBench;

/// <summary>
/// The idle-scale phase's client, against the sample app (samples/KestrelApp) on any transport: holds
/// <c>connections</c> idle keep-alive connections, each after one GET /plaintext, reads the server's RSS
/// (VmRSS of /proc/PID/status) before and while they are held, then times <c>requests</c> sequential
/// requests on one more connection, paced so they span seconds and meet whatever the server does
/// periodically with that many connections (Kestrel's heartbeat walks every one of them each second).
/// </summary>
internal static class IdleBench
{
    private static readonly byte[] Request = "GET /plaintext HTTP/1.1\r\nHost: x\r\n\r\n"u8.ToArray();

    // Linux IPPROTO_IP / IP_BIND_ADDRESS_NO_PORT: a bind with port 0 leaves the port to connect(), which
    // needs it unique per 4-tuple only, so old TIME_WAIT entries of other servers' ports never count.
    private const int IpProtoIp = 0;
    private const int IpBindAddressNoPort = 24;

    public sealed record Settings(
        string Label, int Port, int Connections, int Requests, int Pid, int PerAddress, int Concurrency,
        int ConnectSeconds, int SettleMs, int PauseMs, int Warmup);

    public static async Task<int> RunAsync(Settings s)
    {
        var server = new IPEndPoint(IPAddress.Loopback, s.Port);
        var addresses = (s.Connections + s.PerAddress - 1) / s.PerAddress;
        if (addresses > 250)
        {
            throw new ArgumentException($"{s.Connections} connections at {s.PerAddress} per source address need {addresses} addresses; 127.0.0.2-127.0.0.251 is the most");
        }

        // Warm-up on a throwaway connection: the JIT, Kestrel's and the transport's pools, before the
        // first reading, so the difference is what the held connections keep.
        var buffer = new byte[2048];
        using (var warm = Connect(server, null))
        {
            for (var i = 0; i < s.Warmup; i++)
            {
                RoundTrip(warm, buffer);
            }
        }

        Thread.Sleep(s.SettleMs);
        var statsBefore = ServerStats(server);
        var before = Read(s.Pid);
        Console.Error.WriteLine($"idle {s.Label}: before: rss={before.RssKib} KiB fds={before.Fds}; opening {s.Connections} connections from {addresses} source addresses, {s.Concurrency} at a time");

        var held = new Socket?[s.Connections];
        var opening = Stopwatch.StartNew();
        var error = await OpenAllAsync(server, held, s).ConfigureAwait(false);
        var openSeconds = opening.Elapsed.TotalSeconds;
        try
        {
            if (error is not null)
            {
                Console.Error.WriteLine($"idle {s.Label}: error: {error} ({held.Count(static h => h is not null)} of {s.Connections} open after {openSeconds:F1} s)");
                return 1;
            }

            Console.Error.WriteLine($"idle {s.Label}: {s.Connections} connections open and answered in {openSeconds:F1} s");
            Thread.Sleep(s.SettleMs);
            var whileHeld = Read(s.Pid);
            var statsHeld = ServerStats(server);
            // The /stats request is a connection of its own: not one of those held.
            var counted = statsHeld.Connections - statsBefore.Connections - 1;
            if (counted != s.Connections)
            {
                Console.Error.WriteLine($"idle {s.Label}: warning: the server counted {counted} new connections, not {s.Connections}");
            }

            var (latencies, errors) = Timed(server, s, buffer);
            var dropped = held.Count(static h => h!.Poll(0, SelectMode.SelectRead));
            if (dropped > 0)
            {
                Console.Error.WriteLine($"idle {s.Label}: {dropped} held connections were readable (closed by the server, or sent something) after the timed requests");
            }

            Array.Sort(latencies);
            var perConn = (whileHeld.RssKib - before.RssKib) * 1024.0 / s.Connections;
            var heapPerConn = (double)(statsHeld.GcHeapBytes - statsBefore.GcHeapBytes) / s.Connections;
            Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"idle={s.Label} held={s.Connections} rss_before_kib={before.RssKib} rss_held_kib={whileHeld.RssKib} rss_per_conn_bytes={perConn:F0} " +
                $"max_ms={Quantile(latencies, 1.0) / 1000:F3} p99_us={Quantile(latencies, 0.99):F0} p50_us={Quantile(latencies, 0.5):F0} errors={errors + dropped} " +
                $"heap_per_conn_bytes={heapPerConn:F0} requests={latencies.Length} counted={counted} fd_delta={whileHeld.Fds - before.Fds} open_s={openSeconds:F1}"));
            return latencies.Length > 0 ? 0 : 1;
        }
        finally
        {
            foreach (var socket in held)
            {
                socket?.Dispose();
            }
        }
    }

    // N connections, Concurrency at a time, each from 127.0.0.(2 + i / PerAddress), each answered once;
    // the whole of it bounded by ConnectSeconds. Returns the first failure (which stops the rest), or null.
    private static async Task<string?> OpenAllAsync(IPEndPoint server, Socket?[] held, Settings s)
    {
        using var deadline = new CancellationTokenSource(TimeSpan.FromSeconds(s.ConnectSeconds));
        string? failure = null;
        var next = -1;
        var workers = Enumerable.Range(0, s.Concurrency).Select(_ => Task.Run(async () =>
        {
            var buffer = new byte[2048];
            int i;
            while ((i = Interlocked.Increment(ref next)) < held.Length && !deadline.IsCancellationRequested)
            {
                var source = new IPAddress(new byte[] { 127, 0, 0, (byte)(2 + i / s.PerAddress) });
                var socket = NewSocket(source);
                try
                {
                    await socket.ConnectAsync(server, deadline.Token).ConfigureAwait(false);
                    await socket.SendAsync(Request, SocketFlags.None, deadline.Token).ConfigureAwait(false);
                    await ReadResponseAsync(socket, buffer, deadline.Token).ConfigureAwait(false);
                    held[i] = socket;
                }
                catch (Exception ex) when (ex is SocketException or OperationCanceledException or InvalidDataException)
                {
                    socket.Dispose();
                    var what = ex is OperationCanceledException
                        ? $"not every connection was open and answered within {s.ConnectSeconds} s"
                        : $"connection {i} (from {source}) failed: {(ex is SocketException se ? se.SocketErrorCode.ToString() : ex.Message)}";
                    Interlocked.CompareExchange(ref failure, what, null);
                    await deadline.CancelAsync().ConfigureAwait(false);
                    return;
                }
            }
        })).ToArray();
        await Task.WhenAll(workers).ConfigureAwait(false);
        return failure;
    }

    // Requests sequential requests on one more connection, each timed from its write to the end of its
    // response, PauseMs apart; a failed one counts as an error and the next goes on a new connection.
    // Bounded in time too: past Requests x (PauseMs + 100 ms) + 30 s the rest count as errors.
    private static (double[] Micros, int Errors) Timed(IPEndPoint server, Settings s, byte[] buffer)
    {
        var latencies = new List<double>(s.Requests);
        var errors = 0;
        var deadline = Stopwatch.StartNew();
        var limit = TimeSpan.FromMilliseconds(s.Requests * (s.PauseMs + 100.0) + 30_000);
        Socket? socket = null;
        try
        {
            for (var i = 0; i < s.Requests; i++)
            {
                if (deadline.Elapsed > limit)
                {
                    errors += s.Requests - i;
                    Console.Error.WriteLine($"idle {s.Label}: the timed requests ran past {limit.TotalSeconds:F0} s; {s.Requests - i} not sent");
                    break;
                }

                try
                {
                    socket ??= Connect(server, null);
                    var start = Stopwatch.GetTimestamp();
                    RoundTrip(socket, buffer);
                    latencies.Add(Stopwatch.GetElapsedTime(start).TotalMicroseconds);
                }
                catch (Exception ex) when (ex is SocketException or InvalidDataException)
                {
                    errors++;
                    Console.Error.WriteLine($"idle {s.Label}: timed request {i} failed: {(ex is SocketException se ? se.SocketErrorCode.ToString() : ex.Message)}");
                    socket?.Dispose();
                    socket = null;
                }

                Thread.Sleep(s.PauseMs);
            }
        }
        finally
        {
            socket?.Dispose();
        }

        return ([.. latencies], errors);
    }

    private static Socket NewSocket(IPAddress? source)
    {
        var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
        if (source is not null)
        {
            if (OperatingSystem.IsLinux())
            {
                socket.SetRawSocketOption(IpProtoIp, IpBindAddressNoPort, BitConverter.GetBytes(1));
            }

            socket.Bind(new IPEndPoint(source, 0));
        }

        return socket;
    }

    // A blocking connection with 5 s send and receive timeouts (the warm-up's and the timed requests').
    private static Socket Connect(IPEndPoint server, IPAddress? source)
    {
        var socket = NewSocket(source);
        socket.SendTimeout = 5000;
        socket.ReceiveTimeout = 5000;
        try
        {
            socket.Connect(server);
        }
        catch
        {
            socket.Dispose();
            throw;
        }

        return socket;
    }

    private static void RoundTrip(Socket socket, byte[] buffer)
    {
        socket.Send(Request);
        var filled = 0;
        while (true)
        {
            var n = socket.Receive(buffer.AsSpan(filled));
            filled = Received(buffer, filled, n);
            if (ResponseLength(buffer.AsSpan(0, filled)) is { } length)
            {
                Done(filled, length);
                return;
            }
        }
    }

    private static async ValueTask ReadResponseAsync(Socket socket, byte[] buffer, CancellationToken cancellationToken)
    {
        var filled = 0;
        while (true)
        {
            var n = await socket.ReceiveAsync(buffer.AsMemory(filled), SocketFlags.None, cancellationToken).ConfigureAwait(false);
            filled = Received(buffer, filled, n);
            if (ResponseLength(buffer.AsSpan(0, filled)) is { } length)
            {
                Done(filled, length);
                return;
            }
        }
    }

    private static int Received(byte[] buffer, int filled, int n)
    {
        if (n == 0)
        {
            throw new InvalidDataException("the server closed the connection before its response ended");
        }

        filled += n;
        return filled < buffer.Length ? filled : throw new InvalidDataException($"a response longer than {buffer.Length} bytes");
    }

    private static void Done(int filled, int length)
    {
        if (filled != length)
        {
            throw new InvalidDataException($"{filled - length} bytes after the response, none asked for");
        }
    }

    // The whole response's length once its head is in (a 200 with a Content-Length), else null.
    private static int? ResponseLength(ReadOnlySpan<byte> data)
    {
        var end = data.IndexOf("\r\n\r\n"u8);
        if (end < 0)
        {
            return null;
        }

        var head = Encoding.ASCII.GetString(data[..end]);
        if (!head.StartsWith("HTTP/1.1 200 ", StringComparison.Ordinal))
        {
            throw new InvalidDataException($"not a 200 response: '{head.Split('\r')[0]}'");
        }

        foreach (var line in head.Split("\r\n"))
        {
            if (line.StartsWith("content-length:", StringComparison.OrdinalIgnoreCase)
                && int.TryParse(line.AsSpan(15), NumberStyles.AllowLeadingWhite | NumberStyles.AllowTrailingWhite, CultureInfo.InvariantCulture, out var length))
            {
                return end + 4 + length;
            }
        }

        throw new InvalidDataException("a response without Content-Length");
    }

    // q of the sorted values, nearest rank (1.0: the largest); 0 when there are none.
    private static double Quantile(double[] sorted, double q)
        => sorted.Length == 0 ? 0 : sorted[Math.Clamp((int)Math.Ceiling(q * sorted.Length) - 1, 0, sorted.Length - 1)];

    private readonly record struct Reading(long RssKib, int Fds);

    // The server's resident set (VmRSS) and open descriptors.
    private static Reading Read(int pid)
    {
        var rss = File.ReadLines($"/proc/{pid}/status").FirstOrDefault(static l => l.StartsWith("VmRSS:", StringComparison.Ordinal))
            ?? throw new InvalidOperationException($"/proc/{pid}/status has no VmRSS (is {pid} the server?)");
        var kib = long.Parse(rss.AsSpan(6).Trim().TrimEnd("kB").Trim(), CultureInfo.InvariantCulture);
        return new Reading(kib, Directory.GetFileSystemEntries($"/proc/{pid}/fd").Length);
    }

    private readonly record struct Stats(long Connections, long GcHeapBytes);

    // The sample's /stats, over a connection of its own: process.connections (connections Kestrel handed to
    // the app) and process.gcHeapBytes (the GC heap now, garbage not yet collected included).
    private static Stats ServerStats(IPEndPoint server)
    {
        using var socket = Connect(server, null);
        socket.Send("GET /stats HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"u8);
        using var response = new MemoryStream();
        var buffer = new byte[8192];
        int n;
        while ((n = socket.Receive(buffer)) > 0)
        {
            response.Write(buffer, 0, n);
        }

        // The JSON object, whether the body came with a Content-Length or as one chunk.
        var text = Encoding.UTF8.GetString(response.GetBuffer(), 0, (int)response.Length);
        var open = text.IndexOf('{', StringComparison.Ordinal);
        var close = text.LastIndexOf('}');
        if (!text.StartsWith("HTTP/1.1 200 ", StringComparison.Ordinal) || open < 0 || close < open)
        {
            throw new InvalidDataException($"GET /stats: '{text.Split('\r')[0]}'");
        }

        using var json = JsonDocument.Parse(text.AsMemory(open, close - open + 1));
        var process = json.RootElement.GetProperty("process");
        return process.TryGetProperty("gcHeapBytes", out var heap)
            ? new Stats(process.GetProperty("connections").GetInt64(), heap.GetInt64())
            : throw new InvalidDataException("/stats has no process.gcHeapBytes: is samples/KestrelApp up to date?");
    }
}
