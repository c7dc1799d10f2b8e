using System.Collections.Concurrent;
using KestrelApp;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.Extensions.Logging;

namespace WindowsCheck;

/// <summary>
/// <c>WindowsCheck serve</c>: the sample app (samples/KestrelApp: its transport, options and endpoints) in a
/// process of its own, on two ports of 127.0.0.1 (the outbound factory never reconnects a recycled socket to
/// the endpoint it last went to, so against one port nothing would be reused). Adds only what the checking
/// process reads: the client ports its requests came from (<c>/check/ports</c>) and the transport's recycle
/// events on stdout. Prints "listening URL" for each address, then "ready"; ends when its stdin closes (the
/// checking process ended, however) or after <c>--max-seconds</c>.
/// </summary>
internal static class ServeMode
{
    public static async Task<int> RunAsync(string[] args)
    {
        var maxSeconds = 900;
        var rest = new List<string>();
        for (var i = 0; i < args.Length; i++)
        {
            if (args[i] == "--max-seconds" && i + 1 < args.Length)
            {
                maxSeconds = int.Parse(args[++i], System.Globalization.CultureInfo.InvariantCulture);
            }
            else
            {
                rest.Add(args[i]);
            }
        }

        var builder = SampleHost.CreateBuilder(["--urls", "http://127.0.0.1:0;http://127.0.0.1:0", .. rest]);
        var output = TextWriter.Synchronized(Console.Out);
        builder.Logging.ClearProviders();
        builder.Logging.SetMinimumLevel(LogLevel.Warning);
        builder.Logging.AddFilter("Transport.Winsock", LogLevel.Debug);
        builder.Logging.AddProvider(new EventTally(line => output.WriteLine($"event {line}")));

        var app = builder.Build();
        var ports = new ClientPorts();
        app.Use(async (context, next) =>
        {
            if (context.Request.Path.StartsWithSegments("/plaintext") || context.Request.Path.StartsWithSegments("/echo"))
            {
                ports.Saw(context.Connection.RemotePort);
            }

            await next(context);
        });
        SampleHost.MapEndpoints(app);
        app.MapGet("/check/ports", (bool? reset) => Results.Json(ports.Read(reset == true)));

        await app.StartAsync();
        foreach (var address in SampleHost.ServerAddresses(app))
        {
            output.WriteLine($"listening {address}");
        }

        output.WriteLine("ready");
        output.Flush();

        // Stdin closes when the checking process ends, so this process never outlives it.
        var stdinClosed = Task.Run(static () =>
        {
            while (Console.In.ReadLine() is not null)
            {
            }
        });
        await Task.WhenAny(stdinClosed, Task.Delay(TimeSpan.FromSeconds(maxSeconds)));
        using var stopping = new CancellationTokenSource(TimeSpan.FromSeconds(10));
        await app.StopAsync(stopping.Token);
        await app.DisposeAsync();
        return 0;
    }

    /// <summary>/check/ports: requests since the last reset, and how many client ports they came from.</summary>
    internal readonly record struct PortsSeen(long Requests, int DistinctPorts);

    /// <summary>Client ports seen by requests to /plaintext and /echo since the last reset.</summary>
    private sealed class ClientPorts
    {
        private readonly ConcurrentDictionary<int, int> _ports = new();
        private long _requests;

        public void Saw(int port)
        {
            Interlocked.Increment(ref _requests);
            _ports.AddOrUpdate(port, 1, static (_, n) => n + 1);
        }

        public PortsSeen Read(bool reset)
        {
            var result = new PortsSeen(Interlocked.Read(ref _requests), _ports.Count);
            if (reset)
            {
                _ports.Clear();
                Interlocked.Exchange(ref _requests, 0);
            }

            return result;
        }
    }
}
