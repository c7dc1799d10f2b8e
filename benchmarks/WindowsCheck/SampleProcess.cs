using System.Diagnostics;
using System.Text.Json;

namespace WindowsCheck;

/// <summary>
/// This program's serve mode (<see cref="ServeMode"/>: the sample app) as a child process: its two URLs,
/// its /stats, the client ports it saw, and the transport events it printed. Disposing closes its stdin,
/// which ends it, and kills it if it has not ended within 15 s.
/// </summary>
internal sealed class SampleProcess : IAsyncDisposable
{
    private readonly Process _process;
    private readonly HttpClient _http = new(new SocketsHttpHandler { UseProxy = false }) { Timeout = TimeSpan.FromSeconds(15) };
    private readonly List<string> _output = [];

    private SampleProcess(Process process) => _process = process;

    public IReadOnlyList<Uri> Urls { get; private set; } = [];

    /// <summary>The transport's recycle events and every warning the sample logged, by "NAME: MESSAGE".</summary>
    public EventTally Events { get; } = new();

    public int ProcessId => _process.Id;

    public static async Task<SampleProcess> StartAsync(IEnumerable<string> sampleArgs, TimeSpan maxLife)
    {
        var host = Environment.ProcessPath ?? throw new InvalidOperationException("no process path to start the sample with");
        var start = new ProcessStartInfo(host) { RedirectStandardOutput = true, RedirectStandardInput = true, UseShellExecute = false };
        if (Path.GetFileNameWithoutExtension(host) == "dotnet")
        {
            start.ArgumentList.Add(typeof(SampleProcess).Assembly.Location);
        }

        foreach (var arg in (string[])["serve", "--max-seconds", $"{(int)maxLife.TotalSeconds}", .. sampleArgs])
        {
            start.ArgumentList.Add(arg);
        }

        var process = Process.Start(start) ?? throw new InvalidOperationException($"could not start {host} serve");
        var sample = new SampleProcess(process);
        var ready = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var urls = new List<Uri>();
        process.OutputDataReceived += (_, e) =>
        {
            if (e.Data is not { } line)
            {
                ready.TrySetException(new InvalidOperationException("the sample exited before it was ready"));
                return;
            }

            if (line.StartsWith("event ", StringComparison.Ordinal))
            {
                sample.Events.Add(line["event ".Length..]);
            }
            else if (line.StartsWith("listening ", StringComparison.Ordinal))
            {
                urls.Add(new Uri(line["listening ".Length..]));
            }
            else if (line == "ready")
            {
                sample.Urls = [.. urls];
                ready.TrySetResult();
            }
            else
            {
                lock (sample._output)
                {
                    sample._output.Add(line);
                }
            }
        };
        process.BeginOutputReadLine();
        try
        {
            await ready.Task.WaitAsync(TimeSpan.FromSeconds(60)).ConfigureAwait(false);
        }
        catch
        {
            await sample.DisposeAsync().ConfigureAwait(false);
            throw;
        }

        return sample;
    }

    /// <summary>/stats, the sample's counters (<c>counters</c>: the listener's; <c>outbound</c>; <c>process</c>).</summary>
    public async Task<JsonElement> StatsAsync()
    {
        using var stream = await _http.GetStreamAsync(new Uri(Urls[0], "/stats")).ConfigureAwait(false);
        using var document = await JsonDocument.ParseAsync(stream).ConfigureAwait(false);
        return document.RootElement.Clone();
    }

    /// <summary>Requests to /plaintext and /echo since the last reset, and the distinct client ports they came from.</summary>
    public async Task<(long Requests, int DistinctPorts)> PortsAsync(bool reset)
    {
        using var stream = await _http.GetStreamAsync(new Uri(Urls[0], $"/check/ports?reset={(reset ? "true" : "false")}")).ConfigureAwait(false);
        using var document = await JsonDocument.ParseAsync(stream).ConfigureAwait(false);
        return (document.RootElement.GetProperty("requests").GetInt64(), document.RootElement.GetProperty("distinctPorts").GetInt32());
    }

    public async ValueTask DisposeAsync()
    {
        _http.Dispose();
        try
        {
            _process.StandardInput.Close();
            using var wait = new CancellationTokenSource(TimeSpan.FromSeconds(15));
            await _process.WaitForExitAsync(wait.Token).ConfigureAwait(false);
        }
        catch (Exception ex) when (ex is OperationCanceledException or InvalidOperationException or IOException)
        {
            try
            {
                _process.Kill(entireProcessTree: true);
            }
            catch (InvalidOperationException)
            {
            }
        }

        _process.Dispose();
    }

    /// <summary>What the sample printed besides its protocol lines (its own errors, for a failed start).</summary>
    public string OtherOutput()
    {
        lock (_output)
        {
            return string.Join(Environment.NewLine, _output.TakeLast(20));
        }
    }
}
