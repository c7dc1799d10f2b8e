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
    public async Task Three_times_the_descriptor_limit_in_connections_leaves_the_server_alive_idle_and_serving_after(TransportKind transport)
    {
        using var child = await ChildServer.StartAsync(transport, Limit);
        var clients = await ConnectManyAsync(child.Port, 3 * Limit);
        string report;
        try
        {
            // Held: all connected that could be, each with a request sent.
            var cpu = await child.CpuWhileAsync(Hold);
            var aliveHeld = child.IsAlive;
            report = $"{transport}: {clients.Count} of {3 * Limit} connected under ulimit -n {Limit}; while held: {(aliveHeld ? "alive" : "dead")}, {cpu:P0} of a core";
            if (transport == TransportKind.Winsock)
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
        if (transport == TransportKind.Winsock)
        {
            Assert.True(served, report + "\n" + child.Output);
            // It paused, and said so in its counters.
            Assert.Matches(NonZeroPauses(), await child.StatsAsync());
        }
    }

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

        public static async Task<ChildServer> StartAsync(TransportKind transport, int limit)
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
                "-c", "ulimit -n \"$0\" && exec \"$1\" \"$2\" --transport \"$3\" --urls http://127.0.0.1:0 --Logging:LogLevel:Default=Warning --Logging:LogLevel:Microsoft.Hosting.Lifetime=Information",
                limit.ToString(CultureInfo.InvariantCulture), dotnet, app, transport.ToString().ToLowerInvariant(),
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
