using System.Globalization;
using System.Runtime.InteropServices;

namespace WindowsCheck;

/// <summary>
/// What to run on the first real Windows machine (issue #20, "Ready for Windows"), and the same on Linux for
/// the parts that run anywhere. build/windows-check.ps1 builds and runs it; the report on stdout is Markdown to
/// paste, ending "windows-check: N passed, N failed, N skipped"; the exit code is 1 when a check failed.
/// </summary>
internal static class Program
{
    private const string Usage = """
        WindowsCheck: the transport's checks for a real Windows machine; the portable parts run anywhere.

        usage:
          WindowsCheck [run] [--quick] [--requests N] [--concurrency N] [--upload-every N] [--upload-mib N]
                             [--clean N] [--breakers N] [--label TEXT] [--report PATH]
          WindowsCheck serve [--max-seconds S] [sample arguments]   (the sample app, for run to start)
          WindowsCheck --help

        run     starts the sample (this program's serve mode: samples/KestrelApp on two ports of 127.0.0.1, in a
                process of its own, with its defaults: reuse decided by the platform) and checks:
                (a) outbound churn: --requests Connection: close requests (10,000; --quick 1,000), --concurrency
                    at a time (16), on HttpClient with the outbound ConnectCallback, reuse forced on, every
                    --upload-every-th (50) a POST /echo of --upload-mib MiB (4); connect times and stalls of 1 s or
                    more, refused and timed-out connects, sockets created and reused, client ports kept;
                (b) listener clients that break the clean close: --clean clean clients (500; --quick 100), --breakers
                    of each of four breakers (250; --quick 50), --clean clean ones again; the listener counters from
                    /stats, the DisconnectEx error codes from the transport's events, reuse falling back or not;
                (c) Windows only: the bound address after a reuse disconnect against Socket.LocalEndPoint, a
                    dual-mode listener with IPv4 and IPv6 clients in turn on recycled sockets, AcceptEx into a socket
                    recycled from a connect. Elsewhere: "skipped: needs Windows (why)".
                --label goes into the report's heading (the script passes the commit); --report also writes it to PATH.
                Everything is on 127.0.0.1 and ::1 (the dual-mode listener binds [::] for a few seconds: both
                families need the wildcard), bounded in count and time.
        """;

    public static async Task<int> Main(string[] args)
    {
        if (args.Contains("--help") || args.Contains("-h"))
        {
            Console.Out.WriteLine(Usage);
            return 0;
        }

        if (args.FirstOrDefault() == "serve")
        {
            return await ServeMode.RunAsync(args[1..]).ConfigureAwait(false);
        }

        try
        {
            var options = Options.Parse(args.FirstOrDefault() == "run" ? args[1..] : args);
            return await RunAsync(options).ConfigureAwait(false);
        }
        catch (ArgumentException ex)
        {
            Console.Error.WriteLine($"error: {ex.Message}");
            Console.Error.WriteLine(Usage);
            return 2;
        }
    }

    private static async Task<int> RunAsync(Options options)
    {
        var report = new Report(Console.Out);
        report.Line($"## windows-check{(options.Label is null ? "" : $" ({options.Label})")}, {DateTime.UtcNow.ToString("yyyy-MM-dd HH:mm", CultureInfo.InvariantCulture)} UTC");
        report.Fact($"{RuntimeInformation.OSDescription} ({RuntimeInformation.OSArchitecture}), {RuntimeInformation.FrameworkDescription}, {Environment.ProcessorCount} processors");
        report.Fact(options.Quick
            ? "mode: quick (fewer requests and clients than the full run: the portable parts as CI runs them)"
            : "mode: full");
        var started = System.Diagnostics.Stopwatch.StartNew();

        SampleProcess? sample = null;
        try
        {
            sample = await SampleProcess.StartAsync([], TimeSpan.FromMinutes(15)).ConfigureAwait(false);
            report.Fact($"sample: process {sample.ProcessId} on {string.Join(", ", sample.Urls)}");
        }
        catch (Exception ex) when (ex is InvalidOperationException or TimeoutException or System.ComponentModel.Win32Exception)
        {
            report.Check(false, "the sample started", $"{ex.Message}{Environment.NewLine}{sample?.OtherOutput()}");
        }

        if (sample is not null)
        {
            await using (sample.ConfigureAwait(false))
            {
                await OutboundChurn.RunAsync(report, sample, new OutboundChurn.Settings(
                    options.Requests, options.Concurrency, options.UploadEvery, options.UploadMiB * 1024 * 1024,
                    Deadline: TimeSpan.FromSeconds(options.Quick ? 90 : 600), ConnectTimeout: TimeSpan.FromSeconds(10))).ConfigureAwait(false);
                await BrokenCloses.RunAsync(report, sample, new BrokenCloses.Settings(options.Clean, options.Breakers, Concurrency: 8)).ConfigureAwait(false);
            }
        }

        if (OperatingSystem.IsWindows())
        {
            await ReuseMechanics.RunAsync(report).ConfigureAwait(false);
        }
        else
        {
            report.Heading("(c) the mechanics: bound address after a reuse disconnect, dual-mode, AcceptEx into a connect's socket");
            const string Why = "needs Windows (TF_REUSE_SOCKET: .NET on this OS only emulates a reuse disconnect with a new descriptor, so there is no recycled kernel socket whose binding, family or next accept could be looked at)";
            report.Skip("the bound address and port after a reuse disconnect, against Socket.LocalEndPoint", Why);
            report.Skip("a dual-mode listener, IPv4 and IPv6 clients in turn on recycled sockets", Why);
            report.Skip("AcceptEx into a socket recycled from a connect", Why);
        }

        report.Line(string.Create(CultureInfo.InvariantCulture, $"{Environment.NewLine}took {started.Elapsed.TotalSeconds:0} s"));
        report.Totals();
        if (options.ReportPath is { } path)
        {
            Directory.CreateDirectory(Path.GetDirectoryName(Path.GetFullPath(path))!);
            await File.WriteAllTextAsync(path, report.Text).ConfigureAwait(false);
        }

        return report.Failed == 0 ? 0 : 1;
    }

    private sealed record Options(bool Quick, int Requests, int Concurrency, int UploadEvery, int UploadMiB, int Clean, int Breakers, string? Label, string? ReportPath)
    {
        public static Options Parse(string[] args)
        {
            var quick = args.Contains("--quick");
            var values = new Dictionary<string, string>(StringComparer.Ordinal);
            string[] known = ["requests", "concurrency", "upload-every", "upload-mib", "clean", "breakers", "label", "report"];
            for (var i = 0; i < args.Length; i++)
            {
                if (args[i] == "--quick")
                {
                    continue;
                }

                if (!args[i].StartsWith("--", StringComparison.Ordinal) || !known.Contains(args[i][2..]) || i + 1 >= args.Length)
                {
                    throw new ArgumentException($"expected --quick or one of --{string.Join(", --", known)} with a value, got '{args[i]}'");
                }

                values[args[i][2..]] = args[++i];
            }

            int Number(string name, int fallback, int min, int max)
            {
                if (!values.TryGetValue(name, out var text))
                {
                    return fallback;
                }

                return int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out var value) && value >= min && value <= max
                    ? value
                    : throw new ArgumentException($"--{name} must be a whole number in {min}..{max}, got '{text}'");
            }

            return new Options(
                quick,
                Number("requests", quick ? 1_000 : 10_000, 1, 100_000),
                Number("concurrency", 16, 1, 256),
                Number("upload-every", 50, 1, 100_000),
                Number("upload-mib", 4, 1, 64),
                Number("clean", quick ? 100 : 500, 1, 10_000),
                Number("breakers", quick ? 50 : 250, 1, 10_000),
                values.GetValueOrDefault("label"),
                values.GetValueOrDefault("report"));
        }
    }
}
