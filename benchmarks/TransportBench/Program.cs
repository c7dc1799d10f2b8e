using System.Diagnostics;
using System.Globalization;
using System.Net;
using Microsoft.AspNetCore.Connections;
using Transport.Winsock;

namespace TransportBench;

/// <summary>
/// Transport-only benchmark: what a Kestrel transport costs per short connection, without HTTP.
/// stdout carries exactly one result line (bench.sh parses it); everything else goes to stderr.
/// </summary>
internal static class Program
{
    private const string Usage = """
        TransportBench: per-connection cost of a Kestrel transport, without HTTP.

        usage:
          TransportBench run --transport winsock|sockets [--engine auto|sockets|iouring] [--inline true|false]
                             [--seconds 10] [--warmup 2] [--concurrency 16]
          TransportBench client --port P --seconds S [--concurrency 16]
          TransportBench outbound --handler default|winsock|winsock-sockets --port P [--seconds 10] [--warmup 2] [--concurrency 16] [--defer-fin-ms 2000]
          TransportBench idle --port P --connections N --pid SERVERPID [--label L] [--requests 500] [--per-address 5000]
                              [--concurrency 128] [--connect-seconds 120] [--settle-ms 2000] [--pause-ms 10] [--warmup 300]
          TransportBench --help

        run     serves on 127.0.0.1:0 through the transport Kestrel would pick (winsock: services.AddWinsockReuseTransport();
                sockets: Kestrel's SocketTransportFactory; --engine and --inline set ours' Engine and
                UnsafePreferInlineScheduling), spawns the client as a separate process, waits for the first
                connection, warms up, then measures the server process only and prints one line on stdout:
                  transport=T conns=N conns_per_s=R alloc_per_conn=B cpu_us_per_conn=U work_items_per_conn=W errors=E
                conns, alloc (GC.GetTotalAllocatedBytes), cpu (user+sys) and thread pool work items (hops: fewer is
                less scheduling per connection) cover the measured period only; errors
                (client + server) cover the whole run. Exits 1 if no connection completed in the measured period.
        client  the load: C loops of connect, send 1 byte, receive 1 byte, receive until FIN, close, for S seconds;
                prints "ok=N errors=E" on stdout.
        outbound  HttpClient churn (Connection: close) against http://127.0.0.1:P/plaintext, on the default
                SocketsHttpHandler or on ours (WinsockReuse.CreateConnectCallback, deferred FIN --defer-fin-ms);
                measures this process after the warm-up and prints one line on stdout:
                  outbound=H requests=N rps=R cpu_us_per_req=U time_wait=T time_wait_per_req=F errors=E
                time_wait: client TIME_WAIT entries for port P the whole run left (/proc/net/tcp, Linux).
        idle    against the sample app (samples/KestrelApp) on 127.0.0.1:P, process SERVERPID (Linux): --warmup
                requests on a throwaway connection, then N connections (--concurrency at a time, --per-address
                per source address from 127.0.0.2 up, all within --connect-seconds), each answered one
                GET /plaintext and then held idle; after --settle-ms, the server's VmRSS against the one read
                before them; then --requests sequential requests on one more connection, --pause-ms apart, each
                timed from its write to the end of its response. Prints one line on stdout:
                  idle=L held=N rss_before_kib=K rss_held_kib=K rss_per_conn_bytes=B max_ms=T p99_us=U p50_us=U errors=E
                  heap_per_conn_bytes=H requests=M counted=C fd_delta=F open_s=S
                (heap: the server's GC heap from /stats, held minus before, per connection; requests: timed ones
                that succeeded; counted: new connections its /stats counted; fd_delta: its descriptors held minus
                before; errors: failed timed requests and held connections the server closed). Exits 1, with the
                reason on stderr, if any of the N connections failed or was not answered in time.
        """;

    public static async Task<int> Main(string[] args)
    {
        try
        {
            if (args.Contains("--help") || args.Contains("-h"))
            {
                Console.Out.WriteLine(Usage);
                return 0;
            }

            return args.FirstOrDefault() switch
            {
                "run" => await RunAsync(ParseOptions(args.AsSpan(1), "transport", "engine", "inline", "seconds", "warmup", "concurrency")).ConfigureAwait(false),
                "client" => await ClientAsync(ParseOptions(args.AsSpan(1), "port", "seconds", "concurrency")).ConfigureAwait(false),
                "outbound" => await OutboundAsync(ParseOptions(args.AsSpan(1), "handler", "port", "seconds", "warmup", "concurrency", "defer-fin-ms")).ConfigureAwait(false),
                "idle" => await IdleAsync(ParseOptions(args.AsSpan(1), "label", "port", "connections", "requests", "pid", "per-address", "concurrency",
                    "connect-seconds", "settle-ms", "pause-ms", "warmup")).ConfigureAwait(false),
                var mode => throw new ArgumentException(mode is null ? "no mode given" : $"unknown mode '{mode}' (run, client, outbound, idle, --help)"),
            };
        }
        catch (ArgumentException ex)
        {
            Console.Error.WriteLine($"error: {ex.Message}");
            Console.Error.WriteLine(Usage);
            return 2;
        }
    }

    private static async Task<int> RunAsync(Dictionary<string, string> options)
    {
        var transport = Get(options, "transport", "");
        if (transport is not ("winsock" or "sockets"))
        {
            throw new ArgumentException("--transport must be winsock or sockets");
        }

        var seconds = GetNumber(options, "seconds", 10, min: 1);
        var warmup = GetNumber(options, "warmup", 2, min: 0);
        var concurrency = GetNumber(options, "concurrency", 16, min: 1);

        var engine = Get(options, "engine", "auto") switch
        {
            "auto" => WinsockEngine.Auto,
            "sockets" => WinsockEngine.Sockets,
            "iouring" => WinsockEngine.IoUring,
            var other => throw new ArgumentException($"--engine must be auto, sockets or iouring; it was '{other}'"),
        };
        var inline = Get(options, "inline", "false") switch
        {
            "true" => true,
            "false" => false,
            var other => throw new ArgumentException($"--inline must be true or false; it was '{other}'"),
        };
        await using var transports = Transports.Create(transport, new IPEndPoint(IPAddress.Loopback, 0), engine, inline);
        var listener = await transports.Factory.BindAsync(new IPEndPoint(IPAddress.Loopback, 0)).ConfigureAwait(false);
        var port = ((IPEndPoint)listener.EndPoint).Port;
        Console.Error.WriteLine($"listening on 127.0.0.1:{port}");

        var server = new BenchServer(listener);
        var acceptLoop = Task.Run(server.AcceptLoopAsync);

        // The client runs a little past the measured period so the load covers all of it.
        using var client = StartClient(port, warmup + seconds + 1, concurrency);
        var clientOutput = client.StandardOutput.ReadToEndAsync();

        var first = await Task.WhenAny(server.FirstConnection.Task, client.WaitForExitAsync(), Task.Delay(TimeSpan.FromSeconds(30))).ConfigureAwait(false);
        if (first != server.FirstConnection.Task)
        {
            Console.Error.WriteLine("no connection completed: the client exited or nothing arrived within 30 s");
        }
        else
        {
            await Task.Delay(TimeSpan.FromSeconds(warmup)).ConfigureAwait(false);
        }

        var before = Snapshot.Take(server);
        if (first == server.FirstConnection.Task)
        {
            await Task.Delay(TimeSpan.FromSeconds(seconds)).ConfigureAwait(false);
        }

        var after = Snapshot.Take(server);

        var (clientOk, clientErrors) = await WaitForClientAsync(client, clientOutput, TimeSpan.FromSeconds(warmup + seconds + 15)).ConfigureAwait(false);
        await StopAsync(listener, server, acceptLoop).ConfigureAwait(false);
        ReportWinsockCounters(transports);

        var conns = after.Completed - before.Completed;
        var wall = (after.Wall - before.Wall).TotalSeconds;
        var cpuMicros = (after.Cpu - before.Cpu).TotalMicroseconds;
        var errors = clientErrors + server.Errors;
        Console.Error.WriteLine($"client: ok={clientOk} errors={clientErrors}; server: completed={server.Completed} errors={server.Errors}");
        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"transport={transport} conns={conns} conns_per_s={(wall > 0 ? conns / wall : 0):F1} alloc_per_conn={(conns > 0 ? (after.Allocated - before.Allocated) / conns : 0)} cpu_us_per_conn={(conns > 0 ? cpuMicros / conns : 0):F1} work_items_per_conn={(conns > 0 ? (double)(after.WorkItems - before.WorkItems) / conns : 0):F2} errors={errors}"));
        return conns > 0 ? 0 : 1;
    }

    private static async Task<int> ClientAsync(Dictionary<string, string> options)
    {
        var port = options.ContainsKey("port") ? GetNumber(options, "port", 0, min: 1, max: 65535) : throw new ArgumentException("client needs --port");
        var seconds = GetNumber(options, "seconds", 10, min: 1);
        var client = new BenchClient(port, TimeSpan.FromSeconds(seconds), GetNumber(options, "concurrency", 16, min: 1));
        await client.RunAsync().ConfigureAwait(false);
        foreach (var (kind, count) in client.ErrorKinds)
        {
            Console.Error.WriteLine($"client: {count} x {kind}");
        }

        Console.Out.WriteLine(string.Create(CultureInfo.InvariantCulture, $"ok={client.Succeeded} errors={client.Errors}"));
        return 0;
    }

    private static Task<int> OutboundAsync(Dictionary<string, string> options)
    {
        var handler = Get(options, "handler", "");
        if (handler is not ("default" or "winsock" or "winsock-sockets"))
        {
            throw new ArgumentException("--handler must be default, winsock or winsock-sockets");
        }

        var port = options.ContainsKey("port") ? GetNumber(options, "port", 0, min: 1, max: 65535) : throw new ArgumentException("outbound needs --port");
        return OutboundBench.RunAsync(handler, port, GetNumber(options, "seconds", 10, min: 1), GetNumber(options, "warmup", 2, min: 0),
            GetNumber(options, "concurrency", 16, min: 1), GetNumber(options, "defer-fin-ms", 2000, min: 0, max: 5000));
    }

    private static Task<int> IdleAsync(Dictionary<string, string> options)
    {
        var port = options.ContainsKey("port") ? GetNumber(options, "port", 0, min: 1, max: 65535) : throw new ArgumentException("idle needs --port");
        var connections = options.ContainsKey("connections") ? GetNumber(options, "connections", 0, min: 1) : throw new ArgumentException("idle needs --connections");
        var pid = options.ContainsKey("pid") ? GetNumber(options, "pid", 0, min: 1, max: int.MaxValue) : throw new ArgumentException("idle needs --pid (the server's)");
        return IdleBench.RunAsync(new IdleBench.Settings(
            Get(options, "label", "server"), port, connections, GetNumber(options, "requests", 500, min: 1), pid,
            GetNumber(options, "per-address", 5000, min: 1, max: 28_000), GetNumber(options, "concurrency", 128, min: 1, max: 1024),
            GetNumber(options, "connect-seconds", 120, min: 1, max: 600), GetNumber(options, "settle-ms", 2000, min: 0, max: 60_000),
            GetNumber(options, "pause-ms", 10, min: 0, max: 1000), GetNumber(options, "warmup", 300, min: 0)));
    }

    // The same executable in client mode: `dotnet TransportBench.dll client ...` or the apphost directly.
    private static Process StartClient(int port, int seconds, int concurrency)
    {
        var host = Environment.ProcessPath ?? throw new InvalidOperationException("no process path to start the client with");
        var start = new ProcessStartInfo(host) { RedirectStandardOutput = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(host) == "dotnet")
        {
            start.ArgumentList.Add(typeof(Program).Assembly.Location);
        }

        foreach (var arg in new[] { "client", "--port", $"{port}", "--seconds", $"{seconds}", "--concurrency", $"{concurrency}" })
        {
            start.ArgumentList.Add(arg);
        }

        return Process.Start(start) ?? throw new InvalidOperationException($"could not start the client with {host}");
    }

    private static async Task<(long Ok, long Errors)> WaitForClientAsync(Process client, Task<string> output, TimeSpan timeout)
    {
        using var cts = new CancellationTokenSource(timeout);
        try
        {
            await client.WaitForExitAsync(cts.Token).ConfigureAwait(false);
        }
        catch (OperationCanceledException)
        {
            Console.Error.WriteLine("client: did not exit in time; killing it");
            client.Kill();
            return (0, 1);
        }

        // "ok=N errors=E"; a client that died without it counts as one error.
        var fields = (await output.ConfigureAwait(false)).Split([' ', '\n', '\r'], StringSplitOptions.RemoveEmptyEntries)
            .Select(static f => f.Split('=', 2)).Where(static kv => kv.Length == 2).ToDictionary(static kv => kv[0], static kv => kv[1]);
        if (client.ExitCode != 0 || !fields.TryGetValue("ok", out var ok) || !fields.TryGetValue("errors", out var errors))
        {
            Console.Error.WriteLine($"client: exited with {client.ExitCode} and no result line");
            return (0, 1);
        }

        return (long.Parse(ok, CultureInfo.InvariantCulture), long.Parse(errors, CultureInfo.InvariantCulture));
    }

    // Unbind ends the accept loop (AcceptAsync returns null); connections in flight finish; then dispose.
    private static async Task StopAsync(IConnectionListener listener, BenchServer server, Task acceptLoop)
    {
        var timer = Stopwatch.StartNew();
        await listener.UnbindAsync().ConfigureAwait(false);
        if (await Task.WhenAny(acceptLoop, Task.Delay(TimeSpan.FromSeconds(10))).ConfigureAwait(false) != acceptLoop)
        {
            Console.Error.WriteLine("server: the accept loop did not end within 10 s of unbinding");
        }

        if (!await server.DrainAsync(TimeSpan.FromSeconds(10)).ConfigureAwait(false))
        {
            Console.Error.WriteLine($"server: {server.Active} connections still open 10 s after unbinding");
        }

        await listener.DisposeAsync().ConfigureAwait(false);
        Console.Error.WriteLine($"server: unbound and disposed in {timer.ElapsedMilliseconds} ms");
    }

    private static void ReportWinsockCounters(Transports transports)
    {
        if (transports.WinsockCounters is { } c)
        {
            Console.Error.WriteLine($"winsock: engine={c.Engine} ({c.EngineStatus})");
            Console.Error.WriteLine($"winsock: reuse={c.ReuseActive} ({c.ReuseStatus}); accepted={c.ConnectionsAccepted} created={c.SocketsCreated} reused={c.SocketsReused} " +
                $"graceful={c.GracefulCloses} abortive={c.AbortiveCloses} resets={c.ConnectionResets} drainTimeouts={c.DrainTimeouts} " +
                $"disconnectFailures={c.DisconnectFailures} disconnectTimeouts={c.DisconnectTimeouts}");
        }
    }

    private static Dictionary<string, string> ParseOptions(ReadOnlySpan<string> args, params string[] known)
    {
        var options = new Dictionary<string, string>(StringComparer.Ordinal);
        for (var i = 0; i < args.Length; i += 2)
        {
            if (!args[i].StartsWith("--", StringComparison.Ordinal) || !known.Contains(args[i][2..]) || i + 1 >= args.Length)
            {
                throw new ArgumentException($"expected one of --{string.Join(", --", known)} with a value, got '{args[i]}'");
            }

            options[args[i][2..]] = args[i + 1];
        }

        return options;
    }

    private static string Get(Dictionary<string, string> options, string name, string fallback)
        => options.TryGetValue(name, out var value) ? value : fallback;

    private static int GetNumber(Dictionary<string, string> options, string name, int fallback, int min, int max = 100_000)
    {
        if (!options.TryGetValue(name, out var text))
        {
            return fallback;
        }

        return int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var value) && value >= min && value <= max
            ? value
            : throw new ArgumentException($"--{name} must be a whole number in {min}..{max}, got '{text}'");
    }

    /// <summary>Server-process readings at one instant; the measured period is the difference of two.</summary>
    private readonly record struct Snapshot(long Completed, long Allocated, TimeSpan Cpu, TimeSpan Wall, long WorkItems)
    {
        private static readonly Stopwatch Clock = Stopwatch.StartNew();

        public static Snapshot Take(BenchServer server)
        {
            using var self = Process.GetCurrentProcess();
            return new Snapshot(server.Completed, GC.GetTotalAllocatedBytes(precise: true), self.TotalProcessorTime, Clock.Elapsed, ThreadPool.CompletedWorkItemCount);
        }
    }
}
