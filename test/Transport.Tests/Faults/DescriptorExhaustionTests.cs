using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Text.RegularExpressions;
using Transport.Tests.Infrastructure;

namespace Transport.Tests.Faults;

/// <summary>
/// The sample in a child process with a low RLIMIT_NOFILE, and three times that many connections held
/// open at once: the transport pauses accepting (connections wait in the backlog) and keeps descriptors
/// for the runtime, so the process stays alive, idles while held, and serves again once they leave.
/// Kestrel's Sockets transport goes through the same run; what it does is reported, not asserted.
/// </summary>
[Collection(nameof(ProcessWideTests))]
public sealed partial class DescriptorExhaustionTests
{
    private const int Limit = 512;
    private const string NotLinux = "RLIMIT_NOFILE, ulimit and /proc/<pid>/stat are Linux's; the child process runs the Linux build of the sample.";
    private static readonly TimeSpan Hold = TimeSpan.FromSeconds(2);

    public static bool IsLinux => OperatingSystem.IsLinux();

    [Theory(Skip = NotLinux, SkipUnless = nameof(IsLinux), SkipType = typeof(DescriptorExhaustionTests))]
    [InlineData(TransportKind.Winsock)]
    [InlineData(TransportKind.Sockets)]
    public Task Three_times_the_descriptor_limit_in_connections_leaves_the_server_alive_idle_and_serving_after(TransportKind transport)
        // Kestrel's Sockets transport goes through it too: reported, not asserted.
        => ExhaustAndRecoverAsync(transport, engine: "", Limit, 3 * Limit, asserted: transport == TransportKind.Winsock);

    /// <summary>
    /// Opens <paramref name="connections"/> at once against the sample under <c>ulimit -n</c>
    /// <paramref name="limit"/>, holds them, lets them go, and reports what the server did; when
    /// <paramref name="asserted"/>: it stayed alive, under half a core while held, paused (in its counters
    /// and with the Warning, event 20) and served again once they left.
    /// </summary>
    private static async Task ExhaustAndRecoverAsync(TransportKind transport, string engine, int limit, int connections, bool asserted)
    {
        using var child = await ChildServer.StartAsync(transport, limit, engine);
        if (engine.Length > 0)
        {
            Assert.Contains($"\"engine\":\"{engine}\"", await child.StatsAsync(), StringComparison.Ordinal);
        }

        var clients = await ConnectManyAsync(child.Port, connections);
        string report;
        try
        {
            // Held: all connected that could be, each with a request sent.
            var cpu = await child.CpuWhileAsync(Hold);
            var aliveHeld = child.IsAlive;
            report = $"{transport}{(engine.Length > 0 ? $" ({engine})" : "")}: {clients.Count} of {connections} connected under ulimit -n {limit}; while held: {(aliveHeld ? "alive" : "dead")}, {cpu:P0} of a core";
            if (asserted)
            {
                Assert.True(aliveHeld, report + "\n" + child.Output);
                Assert.True(cpu < 0.5, report);
            }
        }
        finally
        {
            foreach (var client in clients)
            {
                client.Dispose();
            }
        }

        var again = Stopwatch.StartNew();
        var served = await child.ServesAsync(TimeSpan.FromSeconds(15));
        report += $"; after they left: {(served ? $"served again after {again.Elapsed.TotalSeconds:F2} s" : child.IsAlive ? "alive, not serving" : "dead")}";
        TestContext.Current.SendDiagnosticMessage(report);
        if (asserted)
        {
            Assert.True(served, report + "\n" + child.Output);
            // It paused, and said so: in its counters, and once at Warning (event 20, AcceptPaused).
            Assert.Matches(NonZeroPauses(), await child.StatsAsync());
            Assert.Contains("warn: Transport.Winsock[20]", child.Output, StringComparison.Ordinal);
        }
    }

    /// <summary>Whether the io_uring engine can run in this process (the child's verdict is the same).</summary>
    public static bool IoUringRuns => Transport.Winsock.Engines.IoUring.IoUringProbe.Result.Passed;

    /// <summary>
    /// The io_uring engine under <c>ulimit -n 256</c> with 600 connections at once: its accepts fail with
    /// EMFILE (or the reserve holds them back), the listener pauses instead of spinning, warns once, and
    /// serves again once the clients leave.
    /// </summary>
    [Fact(Skip = "io_uring cannot run in this process (not Linux, or its probe failed), so neither can the child's io_uring engine.", SkipUnless = nameof(IoUringRuns), SkipType = typeof(DescriptorExhaustionTests))]
    public Task On_io_uring_600_connections_under_ulimit_256_pause_accepting_without_spinning_and_it_serves_again()
        => ExhaustAndRecoverAsync(TransportKind.Winsock, engine: "IoUring", limit: 256, connections: 600, asserted: true);

    /// <summary>
    /// Ten thousand keep-alive connections open at once on the io_uring engine (the server in a child
    /// process, so that the two ends' descriptors do not share one limit): each is served a request, and
    /// then another on the same connection, and the server accepted every one of them.
    /// </summary>
    [Fact(Skip = "io_uring cannot run in this process (not Linux, or its probe failed), so neither can the child's io_uring engine.", SkipUnless = nameof(IoUringRuns), SkipType = typeof(DescriptorExhaustionTests))]
    public async Task On_io_uring_ten_thousand_keep_alive_connections_at_once_are_each_served_twice()
    {
        const int Count = 10_000;
        var limit = Soak.SoakTests.OpenFileLimit();
        Assert.True(limit >= Count + 1_000, $"the open-file limit is {limit}: {Count} client sockets in this process need more");
        using var child = await ChildServer.StartAsync(TransportKind.Winsock, (int)Math.Min(limit, 65_536), engine: "IoUring");
        Assert.Contains("\"engine\":\"IoUring\"", await child.StatsAsync(), StringComparison.Ordinal);

        var clients = new List<Socket>(Count);
        var ct = TestContext.Current.CancellationToken;
        try
        {
            // In waves, so that the listen backlog (512) never overflows into SYN retries.
            for (var opened = 0; opened < Count; opened += 250)
            {
                clients.AddRange(await Task.WhenAll(Enumerable.Range(0, 250).Select(async _ =>
                {
                    var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp) { NoDelay = true };
                    await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, child.Port), ct);
                    return socket;
                })));
            }

            for (var round = 0; round < 2; round++)
            {
                var bodies = await Task.WhenAll(clients.Select(client => RequestAsync(client, ct)));
                Assert.All(bodies, body => Assert.EndsWith("Hello, World!", body, StringComparison.Ordinal));
            }

            var stats = await child.StatsAsync();
            var accepted = long.Parse(AcceptedCount().Match(stats).Groups[1].Value, CultureInfo.InvariantCulture);
            Assert.True(accepted >= Count, stats);
            Assert.True(child.IsAlive, child.Output);
            TestContext.Current.SendDiagnosticMessage($"io_uring: {Count} keep-alive connections at once, 2 requests each; server accepted {accepted}");
        }
        finally
        {
            foreach (var client in clients)
            {
                client.Dispose();
            }
        }
    }

    /// <summary>One keep-alive request and its whole 13-byte response (headers, then the body).</summary>
    private static async Task<string> RequestAsync(Socket client, CancellationToken ct)
    {
        await client.SendAsync("GET /plaintext HTTP/1.1\r\nHost: localhost\r\n\r\n"u8.ToArray(), SocketFlags.None, ct);
        var buffer = new byte[1024];
        var received = 0;
        using var timeout = CancellationTokenSource.CreateLinkedTokenSource(ct);
        timeout.CancelAfter(TimeSpan.FromSeconds(30));
        while (true)
        {
            var n = await client.ReceiveAsync(buffer.AsMemory(received), SocketFlags.None, timeout.Token);
            if (n == 0)
            {
                return System.Text.Encoding.ASCII.GetString(buffer, 0, received) + " (closed)";
            }

            received += n;
            var text = System.Text.Encoding.ASCII.GetString(buffer, 0, received);
            if (text.EndsWith("Hello, World!", StringComparison.Ordinal))
            {
                return text;
            }
        }
    }

    [GeneratedRegex("\"connectionsAccepted\":([0-9]+)")]
    private static partial Regex AcceptedCount();

    [GeneratedRegex("\"acceptPauses\":[1-9]")]
    private static partial Regex NonZeroPauses();

    /// <summary>Opens up to <paramref name="count"/> connections at once, each sending a keep-alive request; a connect that is not accepted by the kernel within 2 s is given up.</summary>
    private static async Task<List<Socket>> ConnectManyAsync(int port, int count)
    {
        var request = "GET /plaintext HTTP/1.1\r\nHost: localhost\r\n\r\n"u8.ToArray();
        var attempts = Enumerable.Range(0, count).Select(async _ =>
        {
            var socket = new Socket(AddressFamily.InterNetwork, SocketType.Stream, ProtocolType.Tcp);
            using var timeout = new CancellationTokenSource(TimeSpan.FromSeconds(2));
            try
            {
                await socket.ConnectAsync(new IPEndPoint(IPAddress.Loopback, port), timeout.Token);
                await socket.SendAsync(request, SocketFlags.None, timeout.Token);
                return socket;
            }
            catch (Exception ex) when (ex is SocketException or OperationCanceledException)
            {
                socket.Dispose();
                return null;
            }
        });
        return [.. (await Task.WhenAll(attempts)).OfType<Socket>()];
    }

    /// <summary>The sample app (its build next to the tests) in a child process under <c>ulimit -n</c>.</summary>
    private sealed partial class ChildServer : IDisposable
    {
        private readonly Process _process;
        private readonly System.Text.StringBuilder _output = new();

        private ChildServer(Process process) => _process = process;

        public int Port { get; private set; }

        public bool IsAlive => !_process.HasExited;

        public string Output
        {
            get
            {
                lock (_output)
                {
                    return _output.ToString();
                }
            }
        }

        public static async Task<ChildServer> StartAsync(TransportKind transport, int limit, string engine = "")
        {
            var dotnet = Environment.ProcessPath is { } path && Path.GetFileNameWithoutExtension(path) == "dotnet" ? path : "dotnet";
            var app = Path.Combine(AppContext.BaseDirectory, "KestrelApp.dll");
            var start = new ProcessStartInfo("/bin/bash")
            {
                RedirectStandardOutput = true,
                RedirectStandardError = true,
                UseShellExecute = false,
            };
            foreach (var arg in new[]
            {
                "-c", "ulimit -n \"$0\" && exec \"$1\" \"$2\" --transport \"$3\" --urls http://127.0.0.1:0 --Logging:LogLevel:Default=Warning --Logging:LogLevel:Microsoft.Hosting.Lifetime=Information ${4:+--Kestrel:Transport:Winsock:Engine=$4}",
                limit.ToString(CultureInfo.InvariantCulture), dotnet, app, transport.ToString().ToLowerInvariant(), engine,
            })
            {
                start.ArgumentList.Add(arg);
            }

            var child = new ChildServer(Process.Start(start)!);
            var listening = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
            void OnLine(object sender, DataReceivedEventArgs e)
            {
                if (e.Data is null)
                {
                    return;
                }

                lock (child._output)
                {
                    child._output.AppendLine(e.Data);
                }

                if (Listening().Match(e.Data) is { Success: true } match)
                {
                    listening.TrySetResult(int.Parse(match.Groups[1].Value, CultureInfo.InvariantCulture));
                }
            }

            child._process.OutputDataReceived += OnLine;
            child._process.ErrorDataReceived += OnLine;
            child._process.BeginOutputReadLine();
            child._process.BeginErrorReadLine();
            try
            {
                child.Port = await listening.Task.WaitAsync(TimeSpan.FromSeconds(30), TestContext.Current.CancellationToken);
            }
            catch
            {
                var output = child.Output;
                child.Dispose();
                throw new InvalidOperationException($"the sample did not start under ulimit -n {limit}:\n{output}");
            }

            return child;
        }

        /// <summary>The child's CPU over <paramref name="window"/>, in cores (utime + stime from /proc).</summary>
        public async Task<double> CpuWhileAsync(TimeSpan window)
        {
            var before = CpuTicks();
            await Task.Delay(window, TestContext.Current.CancellationToken);
            var after = CpuTicks();
            // Clock ticks are 100 a second on Linux (USER_HZ).
            return before is null || after is null ? double.NaN : (after.Value - before.Value) / 100.0 / window.TotalSeconds;
        }

        public async Task<bool> ServesAsync(TimeSpan within)
        {
            using var client = new HttpClient { Timeout = TimeSpan.FromSeconds(2) };
            var deadline = Stopwatch.StartNew();
            while (deadline.Elapsed < within && IsAlive)
            {
                try
                {
                    if ((await client.GetStringAsync($"http://127.0.0.1:{Port}/plaintext", TestContext.Current.CancellationToken)) == "Hello, World!")
                    {
                        return true;
                    }
                }
                catch (Exception ex) when (ex is HttpRequestException or TaskCanceledException)
                {
                }

                await Task.Delay(100, TestContext.Current.CancellationToken);
            }

            return false;
        }

        public async Task<string> StatsAsync()
        {
            using var client = new HttpClient { Timeout = TimeSpan.FromSeconds(5) };
            return await client.GetStringAsync($"http://127.0.0.1:{Port}/stats", TestContext.Current.CancellationToken);
        }

        public void Dispose()
        {
            if (!_process.HasExited)
            {
                _process.Kill(entireProcessTree: true);
                _process.WaitForExit(10_000);
            }

            _process.Dispose();
        }

        private long? CpuTicks()
        {
            try
            {
                var stat = File.ReadAllText($"/proc/{_process.Id}/stat");
                var fields = stat[(stat.LastIndexOf(')') + 2)..].Split(' ');
                return long.Parse(fields[11], CultureInfo.InvariantCulture) + long.Parse(fields[12], CultureInfo.InvariantCulture);
            }
            catch (Exception ex) when (ex is IOException or UnauthorizedAccessException)
            {
                return null;
            }
        }

        [GeneratedRegex(@"Now listening on: http://127\.0\.0\.1:(\d+)")]
        private static partial Regex Listening();
    }
}
