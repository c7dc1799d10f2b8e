using System.Diagnostics;
using System.Globalization;
using System.Net;
using Transport.Winsock;

namespace TransportBench;

/// <summary>
/// The outbound phase's client: HttpClient churning against a <c>Connection: close</c> server, on the
/// default SocketsHttpHandler or on ours (its ConnectCallback on <see cref="WinsockOutboundConnectionFactory"/>,
/// with the client-side deferred FIN). Measures this process: requests, CPU per request, and the client
/// TIME_WAIT entries the run left for the server's port (from /proc/net/tcp).
/// </summary>
internal static class OutboundBench
{
    public static async Task<int> RunAsync(string handlerKind, int port, int seconds, int warmup, int concurrency, int deferFinMs)
    {
        var handler = new SocketsHttpHandler { UseProxy = false };
        WinsockOutboundConnectionFactory? factory = null;
        if (handlerKind is "winsock" or "winsock-sockets")
        {
            // winsock: the defaults (io_uring on Linux where it runs); winsock-sockets: .NET's sockets, as on Windows.
            var engine = handlerKind == "winsock" ? WinsockEngine.Auto : WinsockEngine.Sockets;
            factory = new WinsockOutboundConnectionFactory(new WinsockOutboundOptions { Engine = engine, DeferFinTimeout = TimeSpan.FromMilliseconds(deferFinMs) });
            handler.ConnectCallback = WinsockReuse.CreateConnectCallback(factory);
        }

        var timeWaitBefore = ClientTimeWait(port);
        using var client = new HttpClient(handler);
        client.DefaultRequestHeaders.ConnectionClose = true;
        var url = new Uri($"http://127.0.0.1:{port}/plaintext");
        long requests = 0, errors = 0;
        var measuring = false;
        long measured = 0;
        using var stop = new CancellationTokenSource(TimeSpan.FromSeconds(warmup + seconds));
        var loops = Enumerable.Range(0, concurrency).Select(_ => Task.Run(async () =>
        {
            while (!stop.IsCancellationRequested)
            {
                try
                {
                    using var response = await client.GetAsync(url, stop.Token).ConfigureAwait(false);
                    await response.Content.ReadAsByteArrayAsync(stop.Token).ConfigureAwait(false);
                    if (response.IsSuccessStatusCode)
                    {
                        Interlocked.Increment(ref requests);
                        if (Volatile.Read(ref measuring))
                        {
                            Interlocked.Increment(ref measured);
                        }
                    }
                    else
                    {
                        Interlocked.Increment(ref errors);
                    }
                }
                catch (OperationCanceledException) when (stop.IsCancellationRequested)
                {
                }
                catch (HttpRequestException ex)
                {
                    Interlocked.Increment(ref errors);
                    Console.Error.WriteLine($"outbound: {ex.Message}");
                }
            }
        })).ToArray();

        await Task.Delay(TimeSpan.FromSeconds(warmup)).ConfigureAwait(false);
        using var self = Process.GetCurrentProcess();
        self.Refresh();
        var cpuBefore = self.TotalProcessorTime;
        var allocatedBefore = GC.GetTotalAllocatedBytes(precise: false);
        var wall = Stopwatch.StartNew();
        Volatile.Write(ref measuring, true);
        await Task.WhenAll(loops).ConfigureAwait(false);
        Volatile.Write(ref measuring, false);
        self.Refresh();
        var cpu = (self.TotalProcessorTime - cpuBefore).TotalMicroseconds;
        var allocated = GC.GetTotalAllocatedBytes(precise: false) - allocatedBefore;
        var elapsed = wall.Elapsed.TotalSeconds;

        // Connections still ending (a deferred FIN waits for the server) settle before the count.
        await Task.Delay(500).ConfigureAwait(false);
        // At least zero: with tcp_tw_reuse a connect may take over an entry that was there before the run
        // (the readiness probe's), and the count then drops below where it started.
        var timeWait = Math.Max(0, ClientTimeWait(port) - timeWaitBefore);
        if (factory is not null)
        {
            var c = factory.Counters;
            Console.Error.WriteLine($"outbound: connects={c.Connects} failures={c.ConnectFailures} graceful={c.GracefulCloses} timeWaitCloses={c.TimeWaitCloses} peerClosedFirst={c.PeerClosedFirst} deferFinTimeouts={c.DeferFinTimeouts} resets={c.ConnectionResets}");
            await factory.DisposeAsync().ConfigureAwait(false);
        }

        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"outbound={handlerKind} requests={measured} rps={(elapsed > 0 ? measured / elapsed : 0):F1} cpu_us_per_req={(measured > 0 ? cpu / measured : 0):F1} time_wait={timeWait} time_wait_per_req={(requests > 0 ? (double)timeWait / requests : 0):F3} errors={errors} alloc_bytes_per_req={(measured > 0 ? allocated / measured : 0)}"));
        return measured > 0 ? 0 : 1;
    }

    /// <summary>TIME_WAIT entries whose remote port is <paramref name="port"/>: this machine's client side of connections to it.</summary>
    private static int ClientTimeWait(int port)
    {
        var count = 0;
        foreach (var table in new[] { "/proc/net/tcp", "/proc/net/tcp6" })
        {
            if (!File.Exists(table))
            {
                continue;
            }

            foreach (var line in File.ReadLines(table).Skip(1))
            {
                var fields = line.Split(' ', StringSplitOptions.RemoveEmptyEntries);
                if (fields.Length > 3 && fields[3] == "06"
                    && int.Parse(fields[2].AsSpan(fields[2].IndexOf(':', StringComparison.Ordinal) + 1), NumberStyles.HexNumber, CultureInfo.InvariantCulture) == port)
                {
                    count++;
                }
            }
        }

        return count;
    }
}
